"""An output channel spooling while its broker is out of reach, local checkpoints, and the
tasks an agent keeps on disk (pure logic, a fake transport that can lose its link; the
same paths run on real brokers and a real partition in ``tests/chaos/test_partition.py``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.checkpoints import Checkpoints
from echo_agent.dataplane.intake import Gap, Inputs
from echo_agent.dataplane.outbox import SpoolSettings
from echo_agent.localtasks import LocalTasks
from echo_shared.codec import decode, encode_skip
from echo_shared.messages import Binding, ChannelProgress, DeployTask, SpoolSpec, TaskCheckpoint
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names

NAMES = Names("t")
TOPIC = NAMES.data_topic("df", "p", "c")


class Link:
    """A transport whose link can drop: publishes made while it is down are never acked
    (the broker did not get them); ``wait_for_window`` blocks while 3 are in flight."""

    def __init__(self) -> None:
        self.connected = True
        self._up = asyncio.Event()
        self._up.set()
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
        if self.connected:
            fut.set_result(None)
        return fut

    def ack(self, msg: MqttMessage) -> None:
        return None

    @property
    def window_full(self) -> bool:
        return sum(1 for *_, f in self.sent if not f.done()) >= 3

    async def wait_for_window(self) -> None:
        await self._up.wait()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._up.wait(), timeout)

    def cut(self) -> None:
        self.connected = False
        self._up.clear()

    def heal(self) -> None:
        self.connected = True
        self._up.set()

    def top(self) -> int:
        """The highest seq published so far."""
        return max((r[0] for t, p, _ in self.sent if t == TOPIC for r in decode(p).records), default=0)

    def records(self) -> list[int]:
        """Seqs the consumer would take, in order, deduplicated (skips fill their gap)."""
        inputs = Inputs(["p"])
        seen: list[int] = []
        for topic, payload, _ in self.sent:
            if topic != TOPIC:
                continue
            d = decode(payload)
            before = inputs.hwm.get("p", 0)
            for r in inputs.fresh(d):
                seen.append(r["i"])
            assert inputs.hwm.get("p", 0) >= before
        return seen


def progress(hwm: int) -> MqttMessage:
    report = ChannelProgress(consumer="c", producer="p", hwm=hwm, ts=time.time(), generation=1)
    return MqttMessage(
        topic=NAMES.progress_topic(TOPIC),
        payload=report.to_bytes(),
        qos=1,
        mid=0,
        retain=False,
        dup=False,
        epoch=1,
    )


async def until(cond: object, what: str, timeout: float = 5.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def outputs(link: Link, tmp_path: Path, *, window: int = 50, spool: SpoolSpec | None = None) -> Outputs:
    return Outputs(
        link,
        "p",
        1,
        [Binding(peer="c", topic=TOPIC, spool=spool)],
        NAMES,
        window=window,
        spools=SpoolSettings(tmp_path / "spool"),
    )


@pytest.fixture
def link() -> Link:
    return Link()


async def test_cut_off_the_source_keeps_going_and_everything_arrives_once_in_order(
    link: Link, tmp_path: Path
) -> None:
    out = outputs(link, tmp_path, window=50)
    await out.start()
    for i in range(1, 21):
        await out.wait_window()
        out.emit({"i": i})
    link.cut()
    for i in range(21, 1021):  # 20 windows' worth while cut off: never blocks
        await asyncio.wait_for(out.wait_window(), 1.0)
        out.emit({"i": i})
    assert out.spooling
    counts = out.channel_counts()["c"]
    assert counts.spooled == 1000 and counts.spool_bytes > 0 and counts.dropped == 0
    link.heal()
    while out.spooling:  # the consumer confirms what it got: credit for the drain
        top = link.top()
        out.on_control(progress(top))
        await until(lambda t=top: not out.spooling or link.top() > t, f"more than seq {top} sent")
    out.on_control(progress(1020))
    assert link.records() == list(range(1, 1021))
    assert out.channel_counts()["c"].spool_bytes == 0, "space reclaimed once confirmed"
    await out.stop()
    await out.close_spools(remove=True)


async def test_a_tiny_spool_drops_exactly_what_it_counts_and_the_consumer_is_told(
    link: Link, tmp_path: Path
) -> None:
    out = outputs(link, tmp_path, window=100_000, spool=SpoolSpec(max_bytes=64 << 10, overflow="drop_oldest"))
    await out.start()
    link.cut()
    for i in range(1, 5001):  # never waits under drop_oldest
        await asyncio.wait_for(out.wait_window(), 1.0)
        out.emit({"i": i})
    dropped = out.channel_counts()["c"].dropped
    assert dropped > 0
    link.heal()
    await until(lambda: not out.spooling, "the spool drained")
    got = link.records()
    assert len(got) == 5000 - dropped
    assert got == sorted(got) and got[-1] == 5000, "the newest are kept, in order, once"
    await out.stop()
    await out.close_spools(remove=True)


async def test_a_full_block_spool_blocks_the_source(link: Link, tmp_path: Path) -> None:
    out = outputs(link, tmp_path, window=100_000, spool=SpoolSpec(max_bytes=16 << 10, overflow="block"))
    await out.start()
    link.cut()
    blocked = False
    for i in range(1, 2000):
        try:
            await asyncio.wait_for(out.wait_window(), 0.3)
        except TimeoutError:
            blocked = True
            break
        out.emit({"i": i})
    assert blocked, "the source was never held back"
    assert out.channel_counts()["c"].dropped == 0
    await out.stop()
    await out.close_spools(remove=True)


async def test_a_checkpoint_while_cut_off_is_local_and_covers_the_spool(link: Link, tmp_path: Path) -> None:
    out = outputs(link, tmp_path)
    saved: list[bytes] = []
    published: list[bytes] = []
    state = {"n": 0}
    ck = Checkpoints(
        interval=0.0,
        publish=lambda p: published.append(p),
        device="d",
        dataflow="df",
        task="p",
        generation=1,
        outputs=out,
        inputs=None,
        snapshot=lambda: dict(state),
        save_local=lambda p, sync, delta: saved.append(p),
    )
    await out.start()
    link.cut()
    for i in range(1, 11):
        out.emit({"i": i})
        state["n"] = i
    assert ck.due()
    ck.take()
    assert not published and len(saved) == 1, "cut off: kept on the device only, at once"
    snap = TaskCheckpoint.from_bytes(saved[0]).snapshot
    assert (snap.out_seq, snap.state) == (10, {"n": 10})
    # a restart from it: the spool still holds every record up to it
    await out.stop()
    await out.close_spools(remove=False)
    link2 = Link()
    again = Outputs(
        link2,
        "p",
        1,
        [Binding(peer="c", topic=TOPIC)],
        NAMES,
        start_seq=snap.out_seq,
        spools=SpoolSettings(tmp_path / "spool"),
    )
    await again.start()
    await until(lambda: not again.spooling, "the recovered spool sent")
    assert link2.records() == list(range(1, 11))
    await again.stop()
    await again.close_spools(remove=True)


def test_a_skip_message_fills_its_gap_and_nothing_else() -> None:
    inputs = Inputs(["p"])
    assert inputs.fresh(
        decode(b'{"producer":"p","generation":1,"records":[[1,"a"]],"eos":false,"last_seq":null}')
    ) == ["a"]
    with pytest.raises(Gap):
        inputs.fresh(decode(encode_skip("p", 1, 5, 9)))  # 2..4 missing: not covered by the skip
    assert inputs.fresh(decode(encode_skip("p", 1, 2, 9))) == []
    assert inputs.hwm["p"] == 9 and inputs.skipped == 8
    assert inputs.fresh(decode(encode_skip("p", 1, 2, 9))) == []  # again: nothing changes
    assert inputs.skipped == 8


def test_kept_tasks_resume_from_their_own_generation_checkpoint_only(tmp_path: Path) -> None:
    local = LocalTasks(tmp_path / "tasks")
    cmd = DeployTask(cmd_id="x", dataflow="df", task="p", generation=3, operator="io.generate")
    local.save(cmd)
    assert [c.restore for c in local.load()] == [None]
    ckpt = TaskCheckpoint(
        device="d",
        dataflow="df",
        task="p",
        generation=3,
        snapshot={"out_seq": 42, "state": {"n": 42}},
        ts=1.0,
    )
    local.checkpoint("df", "p", ckpt.to_bytes())
    (loaded,) = local.load()
    assert loaded.restore is not None and loaded.restore.out_seq == 42 and loaded.restore.state == {"n": 42}
    assert (tmp_path / "tasks" / "df" / "p" / "checkpoint.json").stat().st_mode & 0o077 == 0
    local.save(cmd.model_copy(update={"generation": 4}))  # a newer copy: the old checkpoint goes
    (loaded,) = local.load()
    assert loaded.generation == 4 and loaded.restore is None
    local.forget("df", "p")
    assert local.load() == [] and not (tmp_path / "tasks" / "df").exists()
