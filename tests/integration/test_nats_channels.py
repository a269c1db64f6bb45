"""Tasks wired over NATS (JetStream) channels, and through a relay from MQTT to NATS.

The runners are driven directly (no master), on the real brokers: what the agent does once
the scheduler has given an edge a NATS channel, or a relay between two brokers.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from echo_agent.running import TaskRunner
from echo_cli.devstack import Brokers
from echo_shared.messages import Binding, DeployTask, TaskStatus
from echo_shared.models import TaskState
from echo_shared.names import Names
from tests.harness.waiting import eventually


def runner(
    brokers: Brokers,
    names: Names,
    tmp: Path,
    task: str,
    operator: str,
    config: dict[str, Any],
    inputs: list[Binding],
    outputs: list[Binding],
    statuses: list[TaskStatus],
    **fields: Any,
) -> TaskRunner:
    cmd = DeployTask(
        **fields,
        cmd_id=uuid.uuid4().hex,
        dataflow="df-nats",
        task=task,
        generation=1,
        operator=operator,
        config=config,
        inputs=inputs,
        outputs=outputs,
    )
    return TaskRunner(
        cmd,
        device="dev",
        mqtt_url=brokers.mqtt_url,
        names=names,
        data_dir=tmp,
        report=statuses.append,
        session_expiry=60,
        nats_url=brokers.nats_url,
        access=brokers.access(),
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def gen_and_sink(
    brokers: Brokers, names: Names, tmp: Path, gen_config: dict[str, Any]
) -> tuple[TaskRunner, TaskRunner, str, Path]:
    """``io.generate`` -> ``io.file_sink`` over a NATS channel (not started yet)."""
    subject = names.data_subject("df-nats", "gen", "sink")
    out = tmp / "out.jsonl"
    statuses: list[TaskStatus] = []
    gen = runner(
        brokers,
        names,
        tmp,
        "gen",
        "io.generate",
        gen_config,
        [],
        [Binding(peer="sink", topic=subject)],
        statuses,
    )
    sink = runner(
        brokers,
        names,
        tmp,
        "sink",
        "io.file_sink",
        {"path": str(out)},
        [Binding(peer="gen", topic=subject)],
        [],
        statuses,
    )
    return gen, sink, subject, out


async def test_a_stream_over_jetstream(brokers: Brokers, names: Names, tmp_path: Path) -> None:
    gen, sink, _, out = gen_and_sink(brokers, names, tmp_path, {"count": 300})
    # the source starts first: what it publishes before the sink exists waits in the work queue
    await gen.start()
    await sink.start()
    try:
        assert gen.state is not TaskState.failed and sink.state is not TaskState.failed, (
            gen.reason,
            sink.reason,
        )
        await eventually(lambda: sink.state is TaskState.finished, timeout=30, what="the sink finishing")
        assert [r["seq"] for r in lines(out)] == list(range(300))
        await eventually(lambda: gen.state is TaskState.finished, timeout=10, what="the source finishing")
    finally:
        await sink.stop(discard_session=True)
        await gen.stop(discard_session=True)


async def test_a_relay_carries_an_edge_from_mqtt_to_nats(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    leg1 = names.data_topic("df-nats", "gen", "relay-0")  # the edge device reaches MQTT only
    leg2 = names.data_subject("df-nats", "relay-0", "sink")  # the cloud device reaches NATS only
    out = tmp_path / "relayed.jsonl"
    statuses: list[TaskStatus] = []
    sink = runner(
        brokers,
        names,
        tmp_path,
        "sink",
        "io.file_sink",
        {"path": str(out)},
        [Binding(peer="relay-0", topic=leg2)],
        [],
        statuses,
    )
    relay = runner(
        brokers,
        names,
        tmp_path,
        "relay-0",
        "core.relay",
        {},
        [Binding(peer="gen", topic=leg1)],
        [Binding(peer="sink", topic=leg2)],
        statuses,
    )
    gen = runner(
        brokers,
        names,
        tmp_path,
        "gen",
        "io.generate",
        {"count": 200, "fields": {"k": "v"}},
        [],
        [Binding(peer="relay-0", topic=leg1)],
        statuses,
    )
    for r in (sink, relay, gen):
        await r.start()
    try:
        assert sink.mqtt is None and gen.transport is not None and gen.transport.nats is None
        await eventually(lambda: sink.state is TaskState.finished, timeout=30, what="the sink finishing")
        assert lines(out) == [{"seq": i, "k": "v"} for i in range(200)]
    finally:
        for r in (gen, relay, sink):
            await r.stop(discard_session=True)


async def test_a_reader_whose_consumer_was_deleted_makes_it_again(
    brokers: Brokers, names: Names, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog of a reader: its durable consumer deleted behind its back (fetches then
    answer nothing, forever) is noticed and made again; the work queue kept what was not
    acknowledged, so every record still arrives once."""
    total = 3_000
    gen, sink, subject, out = gen_and_sink(brokers, names, tmp_path, {"count": total, "rate": 300.0})
    await gen.start()
    await sink.start()
    nc = await nats.connect(brokers.nats_url, **brokers.access().nats_options())
    try:
        await eventually(lambda: len(lines(out)) >= 300, timeout=30, what="records at the sink")
        await nc.jetstream().delete_consumer(names.data_stream, names.consumer_for(subject))
        await eventually(lambda: sink.state is TaskState.finished, timeout=60, what="the sink finishing")
        seqs = [r["seq"] for r in lines(out)]
        assert seqs == list(range(total)), f"{len(seqs)} records, {len(set(seqs))} distinct"
        assert any("was gone: made again" in r.getMessage() for r in caplog.records), "not by the watchdog"
    finally:
        await nc.close()
        await sink.stop(discard_session=True)
        await gen.stop(discard_session=True)
