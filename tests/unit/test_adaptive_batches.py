"""Adaptive batch edges (``batch: {adaptive: true}``): a batch goes as soon as nothing is in
flight on its edge, so a record at a low rate waits for no timer, and under load batches
fill while the one before travels; a fixed batch edge still waits for its count or time."""

from __future__ import annotations

import asyncio

from echo_agent.dataplane.channels import Outputs
from echo_shared.codec import decode
from echo_shared.messages import Binding
from echo_shared.models import BatchSpec, EdgeModel
from echo_shared.names import Names

NAMES = Names("t")
TOPIC = NAMES.data_topic("df", "p", "c")


class SlowAcks:
    """A transport whose publishes the test acknowledges by hand (the broker's PUBACK)."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[list[int], asyncio.Future[None]]] = []

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
        if topic == TOPIC:
            self.sent.append(([r[0] for r in decode(payload).records], fut))
        else:
            fut.set_result(None)
        return fut

    async def wait_for_window(self) -> None:
        return None

    def batches(self) -> list[list[int]]:
        return [seqs for seqs, _ in self.sent]


def outputs(link: SlowAcks, batch: BatchSpec) -> Outputs:
    binding = Binding(peer="c", topic=TOPIC, model=EdgeModel.batch, batch=batch)
    return Outputs(link, "p", 1, [binding], NAMES)  # type: ignore[arg-type]


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_adaptive_edge_sends_at_once_when_idle_and_fills_while_a_batch_travels() -> None:
    link = SlowAcks()
    out = outputs(link, BatchSpec(count=100, seconds=60, adaptive=True))
    out.emit({"i": 1})
    await turns()
    assert link.batches() == [[1]], "idle edge: the record goes at once, no 60 s timer"
    for i in range(2, 6):  # while batch 1 waits for its acknowledgement
        out.emit({"i": i})
        await turns()
    assert link.batches() == [[1]], "nothing more in flight while the first batch travels"
    link.sent[0][1].set_result(None)  # the broker acknowledges batch 1
    await turns()
    assert link.batches() == [[1], [2, 3, 4, 5]], "what gathered meanwhile goes as one batch"
    link.sent[1][1].set_result(None)
    out.emit({"i": 6})
    await turns()
    assert link.batches() == [[1], [2, 3, 4, 5], [6]]


async def test_a_fixed_edge_waits_for_its_count() -> None:
    link = SlowAcks()
    out = outputs(link, BatchSpec(count=3, seconds=60))
    out.emit({"i": 1})
    await turns()
    assert link.batches() == [], "no timer fired, count not reached"
    out.emit({"i": 2})
    out.emit({"i": 3})
    assert link.batches() == [[1, 2, 3]]


def stream_outputs(link: SlowAcks) -> Outputs:
    return Outputs(link, "p", 1, [Binding(peer="c", topic=TOPIC)], NAMES)  # type: ignore[arg-type]


async def test_a_stream_edge_coalesces_only_while_a_message_travels() -> None:
    """Transparent coalescing: one record per message while the edge is idle; the records
    emitted while a message waits for its acknowledgement go together; a record never waits
    longer than the linger bound for an acknowledgement that does not come."""
    link = SlowAcks()
    out = stream_outputs(link)
    out.emit({"i": 1})
    await turns()
    assert link.batches() == [[1]]
    for i in range(2, 7):
        out.emit({"i": i})
    await turns()
    assert link.batches() == [[1]], "gathered while message 1 travels"
    link.sent[0][1].set_result(None)
    await turns()
    assert link.batches() == [[1], [2, 3, 4, 5, 6]]
    out.emit({"i": 7})  # message 2 is never acknowledged: the linger bound sends it anyway
    deadline = asyncio.get_running_loop().time() + 2
    while link.batches()[-1] != [7]:
        assert asyncio.get_running_loop().time() < deadline, "held past the linger bound"
        await asyncio.sleep(0.001)
    await out.stop()


async def test_a_batch_too_big_for_a_broker_goes_as_several_messages() -> None:
    link = SlowAcks()
    out = stream_outputs(link)
    blob = "x" * (300 * 1024)
    for i in range(3):
        out.emit({"i": i, "blob": blob})
    await turns()
    assert link.batches() == [[1], [2], [3]], "900 KB of records: each message under the limit"
    await out.stop()
