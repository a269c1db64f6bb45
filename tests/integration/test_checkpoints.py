"""Periodic checkpoints, gated progress and failover restores, on the real brokers.

The runners are driven directly (no master): the test plays the master's part, keeping
the checkpoints an agent publishes on its ``ckpt`` topic and deploying a restored copy
(a newer generation, ``DeployTask.restore``) as failover would.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_agent.running import TaskRunner
from echo_cli.devstack import Brokers
from echo_shared.codec import encode_records
from echo_shared.messages import (
    Binding,
    ChannelProgress,
    DeployTask,
    TaskCheckpoint,
    TaskSnapshot,
    TaskStatus,
)
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.harness.waiting import eventually

DF = "df-ckpt"


def runner(
    brokers: Brokers,
    names: Names,
    tmp: Path,
    task: str,
    operator: str,
    config: dict[str, Any],
    inputs: list[Binding],
    outputs: list[Binding],
    *,
    generation: int = 1,
    restore: TaskSnapshot | None = None,
    publish: Any = None,
    interval: float = 0.0,
) -> TaskRunner:
    cmd = DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow=DF,
        task=task,
        generation=generation,
        operator=operator,
        config=config,
        inputs=inputs,
        outputs=outputs,
        restore=restore,
    )
    statuses: list[TaskStatus] = []
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
        checkpoint_interval=interval,
        publish_checkpoint=publish,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


class Master:
    """Plays the master's part: receives the checkpoints the agent publishes (real MQTT) and
    says it kept each one (``CheckpointStored``, which the agent's task manager hands to the
    task: here, straight to the runners in ``runners``)."""

    def __init__(self, brokers: Brokers, names: Names) -> None:
        self.topic = names.checkpoint_topic("dev")
        self.received: list[TaskCheckpoint] = []
        self.runners: list[TaskRunner] = []
        self.agent = brokers.mqtt_client("test-agent-" + uuid.uuid4().hex[:6])
        self.master = brokers.mqtt_client("test-master-" + uuid.uuid4().hex[:6], on_message=self._on)

    def _on(self, msg: MqttMessage) -> None:
        ckpt = TaskCheckpoint.from_bytes(msg.payload)
        self.received.append(ckpt)
        for r in self.runners:
            if r.cmd.task == ckpt.task and r.generation == ckpt.generation and r.checkpoints is not None:
                r.checkpoints.stored(ckpt.snapshot.taken_at)

    def publish(self, payload: bytes) -> asyncio.Future[None]:
        return self.agent.publish(self.topic, payload, qos=1)

    def latest(self, task: str) -> TaskCheckpoint | None:
        mine = [c for c in self.received if c.task == task]
        return max(mine, key=lambda c: (c.generation, c.snapshot.taken_at)) if mine else None

    async def __aenter__(self) -> Master:
        await self.agent.start()
        await self.master.start()
        await self.master.subscribe(self.topic)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.master.close()
        await self.agent.close()


async def test_periodic_checkpoints_are_consistent_and_progress_waits_for_them(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    data = names.data_topic(DF, "gen", "count")
    progress_topic = names.progress_topic(data)
    held: list[asyncio.Future[None]] = []
    payloads: list[bytes] = []
    async with Master(brokers, names) as master:

        def publish(payload: bytes) -> asyncio.Future[None]:
            payloads.append(payload)
            fut = master.publish(payload)
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held.append(gate)
            # the first checkpoint's acknowledgement is held back until the test lets it go

            async def later() -> None:
                await fut
                if len(held) > 1:
                    return
                await asyncio.wait({gate})

            return asyncio.ensure_future(later())

        gen = runner(
            brokers,
            names,
            tmp_path,
            "gen",
            "io.generate",
            {"count": 4000, "rate": 2000, "fields": {"k": "a"}},
            [],
            [Binding(peer="count", topic=data)],
            publish=master.publish,
            interval=0.2,
        )
        count = runner(
            brokers,
            names,
            tmp_path,
            "count",
            "stats.count_by_key",
            {"key": "k"},
            [Binding(peer="gen", topic=data)],
            [],
            publish=publish,
            interval=0.2,
        )
        reports: list[ChannelProgress] = []
        watcher = brokers.mqtt_client(
            "test-w-" + uuid.uuid4().hex[:6],
            on_message=lambda m: m.payload and reports.append(ChannelProgress.from_bytes(m.payload)),
        )
        await watcher.start()
        await watcher.subscribe(progress_topic)
        master.runners += [count, gen]
        await count.start()
        await gen.start()
        try:
            assert count.consumer is not None and gen.outputs is not None
            await eventually(lambda: held, timeout=10, what="the first checkpoint")
            await eventually(
                lambda: count.consumer is not None and count.consumer.inputs.hwm.get("gen", 0) > 1000,
                timeout=10,
                what="the consumer moving on",
            )
            # the first checkpoint is not acknowledged: the producer has no confirmation at all
            assert gen.outputs.acked[progress_topic] == 0
            assert len(held) == 1  # one checkpoint in flight at a time
            first = TaskCheckpoint.from_bytes(payloads[0])
            snap = first.snapshot
            # consistent: the state after every record up to hwm and nothing after it
            assert snap.state == {"counts": {"a": snap.hwm["gen"]}} and snap.out_seq == snap.hwm["gen"]
            assert first.generation == 1 and first.task == "count"
            held[0].set_result(None)
            await eventually(
                lambda: gen.outputs is not None and gen.outputs.acked[progress_topic] >= snap.hwm["gen"],
                timeout=5,
                what="the producer hearing of the checkpointed hwm",
            )
            await eventually(lambda: len(payloads) >= 3, timeout=10, what="more checkpoints")
            # the source checkpoints too: its seq and the generator's position match
            src = master.latest("gen")
            assert src is not None and src.snapshot.state == {"next": src.snapshot.out_seq}
            await eventually(lambda: count.state is TaskState.finished, timeout=20, what="the end")
            # the end of stream reports everything (a finished task does not fail over)
            await eventually(lambda: gen.state is TaskState.finished, timeout=10, what="the source's end")
        finally:
            for g in held:
                if not g.done():
                    g.set_result(None)
            await count.stop(discard_session=True)
            await gen.stop(discard_session=True)
            await watcher.close()
    # every report the producer got: the consumer's generation, and (but for the end of
    # stream) an hwm no further than a checkpoint already published
    published = {TaskCheckpoint.from_bytes(p).snapshot.hwm["gen"] for p in payloads}
    assert reports and all(r.generation == 1 for r in reports)
    assert all(r.hwm in published | {0} for r in reports if not r.eos), [r.hwm for r in reports]
    assert reports[-1].eos and reports[-1].hwm == 4000


@pytest.mark.parametrize("transport", ["mqtt", "nats"])
async def test_a_copy_restored_from_a_checkpoint_gets_the_tail_replayed_exactly_once(
    brokers: Brokers, names: Names, tmp_path: Path, transport: str
) -> None:
    n = 3000
    if transport == "mqtt":
        leg1, leg2 = names.data_topic(DF, "gen", "count"), names.data_topic(DF, "count", "sink")
    else:
        leg1, leg2 = names.data_subject(DF, "gen", "count"), names.data_subject(DF, "count", "sink")
    out = tmp_path / "out.jsonl"
    async with Master(brokers, names) as master:
        sink = runner(
            brokers,
            names,
            tmp_path,
            "sink",
            "io.file_sink",
            {"path": str(out)},
            [Binding(peer="count", topic=leg2)],
            [],
        )

        def count_copy(generation: int, restore: TaskSnapshot | None) -> TaskRunner:
            return runner(
                brokers,
                names,
                tmp_path,
                "count",
                "stats.count_by_key",
                {"key": "k"},
                [Binding(peer="gen", topic=leg1)],
                [Binding(peer="sink", topic=leg2)],
                generation=generation,
                restore=restore,
                publish=master.publish,
                interval=0.2,
            )

        count1 = count_copy(1, None)
        gen = runner(
            brokers,
            names,
            tmp_path,
            "gen",
            "io.generate",
            {"count": n, "rate": 1500, "fields": {"k": "a"}},
            [],
            [Binding(peer="count", topic=leg1)],
        )
        copies = [sink, count1, gen]
        master.runners += copies
        for r in copies:
            await r.start()
        try:
            await eventually(lambda: master.latest("count") is not None, timeout=10, what="a checkpoint")
            ckpt = master.latest("count")
            assert ckpt is not None
            await eventually(
                lambda: (
                    count1.records_in > ckpt.snapshot.hwm["gen"] + 200
                    and count1.checkpoints is not None
                    and count1.checkpoints.published is not None
                ),
                timeout=10,
                what="records taken after the checkpoint",
            )
            # the device of count gen 1 dies: no drain, nothing more published, its session stays
            await count1.stop(discard_session=False, fence=True)
            assert count1.checkpoints is not None and count1.checkpoints.published is not None
            gated = count1.checkpoints.published.out_seq  # what the producer was told: at least this
            await eventually(
                lambda: (c := master.latest("count")) is not None and c.snapshot.out_seq >= gated,
                what="the master having the checkpoint the progress was gated at",
            )
            latest = master.latest("count")
            assert latest is not None
            taken = count1.consumer.inputs.hwm["gen"] if count1.consumer else 0
            assert latest.snapshot.hwm["gen"] < taken  # a tail after the checkpoint was taken
            retransmitted = gen.outputs.retransmitted if gen.outputs else 0
            count2 = count_copy(2, latest.snapshot)
            copies.append(count2)
            master.runners.append(count2)
            await count2.start()
            assert count2.state is TaskState.running, count2.reason
            await eventually(lambda: sink.state is TaskState.finished, timeout=30, what="the sink finishing")
            rows = lines(out)
            assert sorted(r["seq"] for r in rows) == list(range(n))  # every seq, exactly once
            assert [r["count"] for r in rows] == list(range(1, n + 1))  # the state was restored
            assert gen.outputs is not None and gen.outputs.retransmitted > retransmitted  # the tail replayed
            assert sink.consumer is not None and sink.consumer.inputs.duplicates > 0  # re-emitted, dropped
        finally:
            for r in reversed(copies):
                await r.stop(discard_session=True)


async def test_data_from_an_older_copy_of_a_producer_is_dropped(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    data = names.data_topic(DF, "p", "sink")
    out = tmp_path / "out.jsonl"
    sink = runner(
        brokers,
        names,
        tmp_path,
        "sink",
        "io.file_sink",
        {"path": str(out)},
        [Binding(peer="p", topic=data)],
        [],
    )
    await sink.start()
    try:
        async with brokers.mqtt_client("test-p-" + uuid.uuid4().hex[:6]) as p:
            await p.publish(data, encode_records("p", 2, [(1, {"v": "new-1"})]), qos=1)
            await eventually(lambda: len(lines(out)) == 1, what="the first record")
            # the old copy (generation 1), cut off, then back: its records are not taken
            await p.publish(data, encode_records("p", 1, [(2, {"v": "old-2"})]), qos=1)
            await eventually(lambda: sink.consumer is not None and sink.consumer.stale == 1, what="the drop")
            await p.publish(data, encode_records("p", 2, [(2, {"v": "new-2"})]), qos=1)
            await eventually(lambda: len(lines(out)) == 2, what="the second record")
        assert [r["v"] for r in lines(out)] == ["new-1", "new-2"]
        assert sink.consumer is not None and len(sink.consumer.acks) == 0  # the stale one acked too
        counts = collections.Counter(r["v"] for r in lines(out))
        assert counts["old-2"] == 0
    finally:
        await sink.stop(discard_session=True)
