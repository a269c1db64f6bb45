"""Fencing: a stale copy (a newer generation runs elsewhere) stops at once and leaves the
task's durable position and progress reports to the newer copy (real brokers)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from echo_agent.control import TaskManager
from echo_cli.devstack import Brokers
from echo_shared.codec import encode_records
from echo_shared.messages import Binding, ChannelProgress, CommandAck, DeployTask, StopTask, TaskSnapshot
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from tests.harness.waiting import eventually

DF = "df-fence"


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def manager(
    brokers: Brokers, names: Names, tmp: Path, sent: list[tuple[str, bytes]], device: str = "dev"
) -> TaskManager:
    return TaskManager(
        device=device,
        mqtt_url=brokers.mqtt_url,
        names=names,
        data_dir=tmp,
        session_expiry=60,
        publish=lambda topic, payload: sent.append((topic, payload)),
        channel_window=1000,
        nats_url=brokers.nats_url,
        access=brokers.access(),
    )


def deploy(generation: int, topic: str, out: Path, restore: TaskSnapshot | None = None) -> DeployTask:
    return DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow=DF,
        task="sink",
        generation=generation,
        operator="io.file_sink",
        config={"path": str(out)},
        inputs=[Binding(peer="p", topic=topic)],
        restore=restore,
    )


@pytest.mark.parametrize("transport", ["mqtt", "nats"])
async def test_a_fenced_copy_leaves_its_session_and_reports_to_the_newer_copy(
    brokers: Brokers, names: Names, tmp_path: Path, transport: str
) -> None:
    topic = names.data_topic(DF, "p", "sink") if transport == "mqtt" else names.data_subject(DF, "p", "sink")
    progress_topic = names.progress_topic(topic)
    out = tmp_path / "out.jsonl"
    sent: list[tuple[str, bytes]] = []
    old = manager(brokers, names, tmp_path / "old", sent, "dev-old")  # the device that was cut off
    new = manager(brokers, names, tmp_path / "new", sent, "dev-new")  # where the task failed over to
    reports: list[ChannelProgress] = []

    def on_report(m: MqttMessage) -> None:
        if m.payload:
            reports.append(ChannelProgress.from_bytes(m.payload))

    async def publish_record(seq: int) -> None:
        payload = encode_records("p", 1, [(seq, {"seq": seq})])
        if producer is not None:
            await producer.publish(topic, payload, qos=1)
        else:  # into the work-queue stream, as a producer task would
            await js.publish(topic, payload, stream=names.data_stream)

    producer: MqttClient | None = None
    nc = await nats.connect(brokers.nats_url, **brokers.access().nats_options())
    js = nc.jetstream()
    if transport == "mqtt":
        producer = brokers.mqtt_client("test-p-" + uuid.uuid4().hex[:6], on_message=on_report)
        await producer.start()
        await producer.subscribe(progress_topic)
    try:
        ack = await old.deploy(deploy(1, topic, out))
        assert ack.ok and ack.state is TaskState.running, ack.reason
        runner = old.tasks[(DF, "sink")]
        await publish_record(1)
        await eventually(lambda: len(lines(out)) == 1, what="the first record")

        ack = await old.stop(
            StopTask(cmd_id=uuid.uuid4().hex, dataflow=DF, task="sink", generation=1, fence=True)
        )
        assert isinstance(ack, CommandAck) and ack.ok and ack.state is TaskState.stopped
        assert ack.snapshot is None and runner.fenced and runner.state is TaskState.stopped
        assert (DF, "sink") not in old.tasks

        if transport == "nats":
            # the durable position is still there, for the newer copy
            info = await js.consumer_info(names.data_stream, names.consumer_for(topic))
            assert info.config.durable_name == names.consumer_for(topic)
            kv = await js.key_value(names.progress_bucket)
            entry = await kv.get(names.progress_key(progress_topic))
            assert entry.value and ChannelProgress.from_bytes(entry.value).generation == 1
            await publish_record(2)  # waits in the work queue, for the durable consumer
        else:
            # the retained progress report was not cleared
            await eventually(lambda: reports and reports[-1].generation == 1, what="a report")
            # no copy runs: no session holds the topic (the stale copy's agent left it); the
            # producer keeps the record until a copy reports it

        # the fenced device gets a deploy of its stale generation again: refused
        again = await old.deploy(deploy(1, topic, out))
        assert not again.ok and again.state is TaskState.stopped

        # restored from the stale copy's position (as from its checkpoint)
        ack = await new.deploy(deploy(2, topic, out, TaskSnapshot(hwm={"p": 1})))
        assert ack.ok and ack.state is TaskState.running, ack.reason
        if transport == "mqtt":
            # the newer copy says where it stands; the producer sends what comes after
            await eventually(
                lambda: reports[-1].generation == 2 and reports[-1].hwm == 1,
                what="the newer copy's report of its position",
            )
            await publish_record(2)
        # the newer copy gets what was sent for the task while no copy ran
        await eventually(
            lambda: [r["seq"] for r in lines(out)] == [1, 2], timeout=10, what="the queued record"
        )
        if transport == "mqtt":
            await eventually(lambda: reports[-1].generation == 2, what="the newer copy's report")
    finally:
        await new.shutdown()
        await old.shutdown()
        if producer is not None:
            await producer.close()
        await nc.close()


@pytest.mark.parametrize("transport", ["mqtt", "nats"])
async def test_a_consumer_accepts_only_the_producer_generations_the_master_assigned(
    brokers: Brokers, names: Names, tmp_path: Path, transport: str
) -> None:
    """A message claiming a newer producer generation than the master assigned is not taken
    (nor acknowledged) until the master assigns it; an older one is dropped as stale."""
    topic = names.data_topic(DF, "p", "sink") if transport == "mqtt" else names.data_subject(DF, "p", "sink")
    out = tmp_path / "out.jsonl"
    sent: list[tuple[str, bytes]] = []
    agent = manager(brokers, names, tmp_path / "a", sent)

    def cmd(producer_generation: int) -> DeployTask:
        c = deploy(1, topic, out)
        c.inputs[0].generation = producer_generation
        return c

    producer: MqttClient | None = None
    nc = await nats.connect(brokers.nats_url, **brokers.access().nats_options())
    js = nc.jetstream()
    if transport == "mqtt":
        producer = brokers.mqtt_client("test-p-" + uuid.uuid4().hex[:6])
        await producer.start()

    async def publish(generation: int, seq: int) -> None:
        payload = encode_records("p", generation, [(seq, {"seq": seq, "gen": generation})])
        if producer is not None:
            await producer.publish(topic, payload, qos=1)
        else:
            await js.publish(topic, payload, stream=names.data_stream)

    try:
        ack = await agent.deploy(cmd(producer_generation=3))
        assert ack.ok, ack.reason
        runner = agent.tasks[(DF, "sink")]
        assert runner.consumer is not None
        await publish(3, 1)
        await eventually(lambda: len(lines(out)) == 1, what="the assigned generation's record")
        await publish(9, 2)  # "learned from traffic" would make 9 the producer's generation
        await eventually(lambda: runner.consumer is not None and runner.consumer.early, what="held")
        await publish(3, 2)  # the real producer carries on: still accepted
        await eventually(lambda: len(lines(out)) == 2, what="the assigned generation still taken")
        assert [r["gen"] for r in lines(out)] == [3, 3]
        await publish(2, 3)  # older than assigned: stale, dropped
        # the master moved the producer (generation 4): records of 4 are taken, 9 still waits
        ack = await agent.deploy(cmd(producer_generation=4))
        assert ack.ok
        await publish(4, 3)
        await eventually(lambda: [r["seq"] for r in lines(out)] == [1, 2, 3], what="generation 4 taken")
        assert [r["gen"] for r in lines(out)] == [3, 3, 4]
        assert runner.consumer is not None and sum(len(v) for v in runner.consumer.early.values()) == 1
    finally:
        await agent.shutdown()
        if producer is not None:
            await producer.close()
        await nc.close()
