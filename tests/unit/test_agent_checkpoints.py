"""Checkpoints and generation fencing in the agent's data plane (pure logic, a fake transport).

The fake transport hands out publish futures the test resolves itself, standing for the
broker's acknowledgements; the same paths run against real brokers in
``tests/integration/test_checkpoints.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from echo_agent.dataplane import checkpoints
from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.checkpoints import Checkpoints
from echo_agent.dataplane.intake import Inputs, Progress
from echo_shared.messages import Binding, ChannelProgress, TaskCheckpoint, TaskSnapshot
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names


class FakeTransport:
    """Publishes are recorded; each returns a future the test resolves (the PUBACK)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, asyncio.Future[None]]] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, payload, fut))
        return fut

    def ack(self, msg: MqttMessage) -> None:
        return None

    async def wait_for_window(self) -> None:
        return None

    @property
    def window_full(self) -> bool:
        return False

    def ack_all(self) -> None:
        for _, _, fut in self.sent:
            if not fut.done():
                fut.set_result(None)


def report_msg(topic: str, hwm: int, generation: int) -> MqttMessage:
    payload = ChannelProgress(consumer="c", producer="p", hwm=hwm, ts=time.time(), generation=generation)
    return MqttMessage(
        topic=topic, payload=payload.to_bytes(), qos=1, mid=0, retain=False, dup=False, epoch=1
    )


def make_checkpoints(out: Outputs, publish: Any, **kw: Any) -> Checkpoints:
    """Task ``p`` of dataflow ``df`` on device ``d``, generation 1 (``kw``: the rest)."""
    kw.setdefault("inputs", None)
    kw.setdefault("snapshot", lambda: None)
    kw.setdefault("interval", 0.0)
    return Checkpoints(publish=publish, device="d", dataflow="df", task="p", generation=1, outputs=out, **kw)


async def test_a_checkpoint_is_published_only_after_its_outputs_are_acknowledged() -> None:
    names = Names("t")
    data = FakeTransport()
    out = Outputs(data, "p", 1, [Binding(peer="c", topic=names.data_topic("df", "p", "c"))], names)
    inputs = Inputs(["up"])
    state = {"n": 0}
    published: list[bytes] = []
    ckpt_acks: list[asyncio.Future[None]] = []
    committed: list[int] = []

    def publish(payload: bytes) -> asyncio.Future[None]:
        published.append(payload)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ckpt_acks.append(fut)
        return fut

    ck = make_checkpoints(
        out,
        publish,
        interval=60.0,
        inputs=inputs,
        snapshot=lambda: dict(state),
        every=3,
        on_published=lambda snap: committed.append(snap.hwm["up"]),
    )
    assert not ck.due()  # nothing moved since the start
    for i in range(1, 4):
        inputs.hwm["up"] = i
        state["n"] = i
        out.emit({"i": i})
    assert ck.due()  # three records: due by count, long before the interval
    ck.take()
    state["n"] = 99  # the operator moves on: the checkpoint keeps what it was
    out.emit({"i": 4})
    await asyncio.sleep(0.01)
    assert not published and ck.busy and not ck.due()  # waits for the broker; one in flight
    for _, _, fut in data.sent[:3]:  # the outputs up to out_seq 3 (not the 4th: it came after)
        fut.set_result(None)
    for _ in range(100):
        if published:
            break
        await asyncio.sleep(0.01)
    ckpt = TaskCheckpoint.from_bytes(published[0])
    assert (ckpt.snapshot.out_seq, ckpt.snapshot.hwm, ckpt.snapshot.state) == (3, {"up": 3}, {"n": 3})
    assert ckpt.generation == 1 and not committed  # not committed before its own PUBACK
    ckpt_acks[0].set_result(None)
    await asyncio.sleep(0.05)
    # the broker has it, the master not yet: progress must not pass it (a failover restores
    # what the master kept)
    assert not committed and ck.busy and ck.published is None
    ck.stored(ckpt.snapshot.taken_at + 1.0)  # another checkpoint's notice: not this one
    await asyncio.sleep(0.05)
    assert not committed
    ck.stored(ckpt.snapshot.taken_at)
    for _ in range(100):
        if committed:
            break
        await asyncio.sleep(0.01)
    assert committed == [3] and ck.published is not None and ck.published.out_seq == 3
    await ck.close()


async def test_a_checkpoint_the_master_never_keeps_is_not_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker acknowledged it but no ``CheckpointStored`` came (the master could not store
    it): it counts as failed, progress stays where it was, and the next one is tried."""
    monkeypatch.setattr(checkpoints, "STORE_TIMEOUT", 0.2)
    names = Names("t")
    out = Outputs(FakeTransport(), "p", 1, [Binding(peer="c", topic=names.data_topic("df", "p", "c"))], names)
    committed: list[TaskSnapshot] = []

    def publish(payload: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)  # the broker's PUBACK at once
        return fut

    ck = make_checkpoints(out, publish, on_published=committed.append)
    ck.take()  # nothing emitted: no output to wait for
    for _ in range(100):
        if not ck.busy:
            break
        await asyncio.sleep(0.01)
    assert not ck.busy and ck.failed == 1 and not committed and ck.published is None
    await ck.close()


async def test_a_checkpoint_whose_outputs_failed_is_not_published() -> None:
    names = Names("t")
    data = FakeTransport()
    out = Outputs(data, "p", 1, [Binding(peer="c", topic=names.data_topic("df", "p", "c"))], names)
    published: list[bytes] = []
    ck = make_checkpoints(out, lambda b: published.append(b))
    out.emit({"i": 1})
    ck.take()
    for _ in range(100):  # a stream edge sends once the task is done with what it has in hand
        if data.sent:
            break
        await asyncio.sleep(0)
    data.sent[0][2].set_exception(OSError("connection lost"))
    for _ in range(100):
        if not ck.busy:
            break
        await asyncio.sleep(0.01)
    assert not published and ck.failed == 1
    assert ck.due()  # tried again at the next opportunity
    await ck.close()


async def test_progress_reports_stop_at_the_gate_and_carry_the_generation() -> None:
    data = FakeTransport()
    progress = Progress(data, "c", {"p": "t/progress"}, step=1, generation=7, gate={"p": 5})
    progress.maybe_report({"p": 20}, caught_up=True, eos={"p": 20})
    report = ChannelProgress.from_bytes(data.sent[-1][1])
    assert (report.hwm, report.eos, report.generation) == (5, False, 7)
    progress.gate = None  # the end of stream: everything
    progress.flush_due({"p": 20}, None, {"p": 20})
    report = ChannelProgress.from_bytes(data.sent[-1][1])
    assert (report.hwm, report.eos) == (20, True)


async def test_producer_ignores_older_consumer_copies_and_replays_to_a_newer_one() -> None:
    names = Names("t")
    for topic in (names.data_topic("df", "p", "c"), names.data_subject("df", "p", "c")):
        data = FakeTransport()
        out = Outputs(data, "p", 1, [Binding(peer="c", topic=topic)], names)
        progress_topic = names.progress_topic(topic)
        for i in range(10):  # one message each: the broker acknowledges each before the next
            out.emit({"i": i})
            await asyncio.sleep(0)
            data.ack_all()
        out.on_control(report_msg(progress_topic, 8, generation=2))
        assert out.acked[progress_topic] == 8
        sent = len(data.sent)
        out.on_control(report_msg(progress_topic, 10, generation=1))  # a stale copy: ignored
        assert out.acked[progress_topic] == 8 and len(data.sent) == sent
        out.on_control(report_msg(progress_topic, 4, generation=3))  # restored from a checkpoint
        assert out.acked[progress_topic] == 4  # its position goes back...
        await asyncio.sleep(0)  # ...and what it lacks goes again (records 9 and 10 are kept)
        await asyncio.sleep(0)
        again = [p for t, p, _ in data.sent[sent:] if t == topic]
        assert len(again) == 2, topic
        await out.stop()


async def test_a_batch_published_before_its_consumer_listened_is_sent_again_when_asked() -> None:
    """A batch edge keeps each batch until the consumer confirms it, as a stream keeps records:
    the first batch of a producer that starts before its consumer subscribed is not lost."""
    names = Names("t")
    data = FakeTransport()
    topic = names.data_topic("df", "p", "c")
    out = Outputs(data, "p", 1, [Binding(peer="c", topic=topic, model="batch", batch={"count": 3})], names)
    for i in range(7):
        out.emit_all([{"n": i}])
    batches = [p for t, p, _ in data.sent if t == topic]
    assert len(batches) == 2  # two full batches of 3; the seventh record waits for its batch
    data.ack_all()
    out.resend(out.channels[0], 1, "the consumer asked from seq 1")
    await asyncio.sleep(0)  # the resend task publishes
    for _ in range(10):
        if len([p for t, p, _ in data.sent if t == topic]) >= 4:
            break
        await asyncio.sleep(0)
    again = [p for t, p, _ in data.sent if t == topic][2:]
    assert again == batches  # both batches again, from seq 1
    await out.stop()


async def test_a_stalled_edge_is_named_until_it_moves_again() -> None:
    """Nothing confirmed for STALL_AFTER while messages wait: ``Outputs.stalled`` names the
    edge (the task reports it as its reason); a progress report clears it."""
    from echo_agent.dataplane.channels import STALL_AFTER

    names = Names("t")
    data = FakeTransport()
    topic = names.data_topic("df", "p", "c")
    out = Outputs(data, "p", 1, [Binding(peer="c", topic=topic)], names)
    for x in (1, 2):  # two messages: the broker acknowledged the first before the second
        out.emit({"x": x})
        await asyncio.sleep(0)
        data.ack_all()
    now = asyncio.get_running_loop().time()
    out.check_channels(now)
    assert out.stalled == {}
    out.check_channels(now + STALL_AFTER - 1)
    assert out.stalled == {}
    out.check_channels(now + STALL_AFTER + 1)
    (why,) = out.stalled.values()
    seconds = f"{STALL_AFTER + 1:.0f}"
    assert why == f"edge p -> c stalled: nothing confirmed for {seconds} s, 2 message(s) waiting (resending)"
    out.on_control(report_msg(names.progress_topic(topic), hwm=1, generation=1))
    assert out.stalled == {}
    out.on_control(report_msg(names.progress_topic(topic), hwm=2, generation=1))
    out.check_channels(now + 10 * STALL_AFTER)  # nothing waits: nothing is stalled
    assert out.stalled == {}
