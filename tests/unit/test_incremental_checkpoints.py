"""Incremental checkpoints of a large state: the agent sends the changes since the latest
whole checkpoint the master kept, the master keeps them as an object naming that base.

Agent: whole first, then deltas once the master kept it; whole again after a refusal, after
``FULL_EVERY``, when the changes grow past ``DELTA_MAX_SHARE``, and while cut off; the
local copy composes. Master: a delta on the latest whole one is kept (its object names the
base, ``load`` composes it), any other is refused with a notice; the base outlives its
deltas. The same runs on real brokers in ``tests/e2e/test_migration.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_agent.dataplane import checkpoints
from echo_agent.dataplane.channels import Outputs
from echo_agent.localtasks import LocalTasks
from echo_agent.operators.builtin import CountByKey
from echo_shared import statedelta
from echo_shared.catalogue.core import CountByKeyConfig
from echo_shared.messages import DeployTask, TaskCheckpoint, TaskSnapshot
from echo_shared.names import Names
from tests.unit.test_agent_checkpoints import FakeTransport, make_checkpoints
from tests.unit.test_snapshot_store import CheckpointStore, mover

KEYS = 4_000  # ~ 0.3 MB of counts: large enough for deltas (DELTA_MIN_BYTES)


def big_counter() -> CountByKey:
    op = CountByKey(CountByKeyConfig(key="k"))
    for i in range(KEYS):
        op.process({"k": f"{'x' * 60}{i}", "seq": i})
    return op


class Agent:
    """A task's checkpoints with a fake broker that acknowledges at once; the test plays the master."""

    def __init__(self, op: CountByKey, saved: list[tuple[bytes, bool]] | None = None) -> None:
        self.op = op
        self.sent: list[TaskCheckpoint] = []
        self.out = Outputs(FakeTransport(), "p", 1, [], Names("t"))

        def publish(payload: bytes) -> Any:
            self.sent.append(TaskCheckpoint.from_bytes(payload))
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        self.ck = make_checkpoints(
            self.out,
            publish,
            snapshot=op.snapshot,
            epoch=op.epoch,
            delta=op.delta,
            save_local=(lambda p, sync, delta: saved.append((p, delta))) if saved is not None else None,
        )

    async def checkpoint(
        self, keys: list[str], *, kept: bool = True, base: bool | None = None
    ) -> TaskCheckpoint:
        """One checkpoint, answered as the master does (``base``: as its default master says,
        a whole one of over 256 KiB kept as an object incremental ones may build on)."""
        for k in keys:
            self.op.process({"k": k, "seq": 0})
        self.out.seq += 1  # something moved
        n = len(self.sent)
        self.ck.take()
        task = self.ck._inflight
        assert task is not None
        while len(self.sent) == n:  # published (after the local copy, off the loop)
            await asyncio.sleep(0)
            assert not task.done(), "the commit ended before publishing"
        ckpt = self.sent[-1]
        if base is None:
            base = not is_delta(ckpt) and len(ckpt.to_bytes()) > 256 * 1024
        self.ck.stored(ckpt.snapshot.taken_at, kept, base)
        await task
        return ckpt


def is_delta(ckpt: TaskCheckpoint) -> bool:
    return statedelta.is_changes(ckpt.snapshot.state)


async def test_deltas_follow_a_kept_whole_checkpoint() -> None:
    a = Agent(big_counter())
    first = await a.checkpoint([])
    assert not is_delta(first)
    second = await a.checkpoint(["new", "x" * 60 + "7"])
    assert is_delta(second), "after a large whole one the master kept: the changes only"
    state = second.snapshot.state
    assert state[statedelta.SINCE] == first.snapshot.taken_at
    assert state[statedelta.DELTA] == {"merge": {"counts": {"new": 1, "x" * 60 + "7": 2}}}
    third = await a.checkpoint(["new"])
    assert third.snapshot.state[statedelta.SINCE] == first.snapshot.taken_at, (
        "cumulative: since the whole one"
    )
    assert third.snapshot.state[statedelta.DELTA]["merge"]["counts"]["new"] == 2
    assert len(third.to_bytes()) < 1_000 < len(first.to_bytes()) // 100
    assert a.ck.deltas == 2 and a.ck.committed == 3
    # composed, it is the operator's state
    whole = orjson.loads(orjson.dumps(first.snapshot.state))
    assert statedelta.apply(whole, third.snapshot.state[statedelta.DELTA]) == {"counts": a.op.counts}


async def test_a_refused_delta_makes_the_next_one_whole() -> None:
    a = Agent(big_counter())
    await a.checkpoint([])
    refused = await a.checkpoint(["a"], kept=False)
    assert is_delta(refused) and a.ck.failed == 1
    assert not is_delta(await a.checkpoint(["b"]))
    assert is_delta(await a.checkpoint(["c"]))


async def test_a_whole_one_goes_again_after_a_while_or_when_the_changes_grow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Agent(big_counter())
    await a.checkpoint([])
    now = checkpoints.time.monotonic()
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: now + checkpoints.FULL_EVERY + 1)
    assert not is_delta(await a.checkpoint(["a"])), "after FULL_EVERY"
    assert is_delta(await a.checkpoint(["a"]))
    many = [f"{'x' * 60}{i}" for i in range(int(KEYS * checkpoints.DELTA_MAX_SHARE * 1.2))]
    assert not is_delta(await a.checkpoint(many)), "changes past DELTA_MAX_SHARE of the whole one"


async def test_no_delta_on_a_whole_one_the_master_did_not_keep_as_a_base() -> None:
    a = Agent(big_counter())
    await a.checkpoint([], base=False)  # kept inline, or by a master of the version before
    assert not is_delta(await a.checkpoint(["a"], base=False))
    await a.checkpoint(["b"])
    assert is_delta(await a.checkpoint(["c"]))


async def test_a_small_state_is_always_whole() -> None:
    op = CountByKey(CountByKeyConfig(key="k"))
    a = Agent(op)
    for k in ("a", "b", "c"):
        assert not is_delta(await a.checkpoint([k]))


async def test_the_local_copy_composes(tmp_path: Path) -> None:
    saved: list[tuple[bytes, bool]] = []
    a = Agent(big_counter(), saved)
    await a.checkpoint([])
    await a.checkpoint(["new"])
    assert [d for _, d in saved] == [False, True]
    local = LocalTasks(tmp_path)
    local.save(DeployTask(cmd_id="x", dataflow="df", task="p", generation=1, operator="stats.count_by_key"))
    for payload, delta in saved:
        local.checkpoint("df", "p", payload, sync=False, delta=delta)
    (cmd,) = local.load()
    assert cmd.restore is not None and cmd.restore.state == {"counts": a.op.counts}
    assert cmd.restore.taken_at == a.sent[-1].snapshot.taken_at
    # a whole one replaces both
    local.checkpoint("df", "p", saved[0][0], sync=False)
    assert not (tmp_path / "df" / "p" / "checkpoint.delta.json").exists()
    # a delta that does not build on the whole one kept is not used
    local.checkpoint("df", "p", saved[1][0], sync=False, delta=True)
    other = TaskCheckpoint.from_bytes(saved[0][0])
    other.snapshot.taken_at += 1
    local.checkpoint("df", "p", other.to_bytes(), sync=False)
    local.checkpoint("df", "p", saved[1][0], sync=False, delta=True)
    (cmd,) = local.load()
    assert cmd.restore is not None and cmd.restore.taken_at == other.snapshot.taken_at


async def test_cut_off_checkpoints_are_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[tuple[bytes, bool]] = []
    a = Agent(big_counter(), saved)
    await a.checkpoint([])
    monkeypatch.setattr(Outputs, "spooling", property(lambda self: True))
    a.out.close_batches = lambda: None  # type: ignore[method-assign]
    a.out.sync_spools = lambda: None  # type: ignore[method-assign]
    a.op.process({"k": "a", "seq": 0})
    a.out.seq += 1
    a.ck.take()
    payload, delta = saved[-1]
    assert not delta and not statedelta.is_changes(TaskCheckpoint.from_bytes(payload).snapshot.state)
    assert a.ck._whole is None, "the local copy is whole: the next goes whole too"


# ---------------------------------------------------------------- the master


def ckpt_of(taken_at: float, state: Any, generation: int = 1) -> TaskCheckpoint:
    return TaskCheckpoint(
        device="fog-1",
        dataflow="df",
        task="count",
        generation=generation,
        snapshot=TaskSnapshot(out_seq=int(taken_at), state=state, taken_at=taken_at),
        ts=taken_at,
    )


async def test_the_master_keeps_a_delta_on_its_latest_whole_checkpoint() -> None:
    store_ = CheckpointStore()
    m, bucket, notices = mover(store_)
    whole = {"counts": {f"k{i}": 1 for i in range(10)}}
    await m.on_checkpoint(ckpt_of(1.0, whole))
    d1 = {"merge": {"counts": {"k1": 2, "new": 1}}}
    await m.on_checkpoint(ckpt_of(2.0, statedelta.changes(d1, 1.0)))
    assert [n.kept for n in notices] == [True, True]
    assert [n.base for n in notices] == [True, False], "the whole one in the object store is a base"
    kept = store_.kept[("df", "count")].snapshot
    assert kept.state == {
        "$object": "df.count.1.ckpt.2000",
        "bytes": len(bucket.data["df.count.1.ckpt.2000"]),
    }
    composed = await m.snapshots.load("df.count.1.ckpt.2000")
    assert composed == {"counts": {**whole["counts"], "k1": 2, "new": 1}}
    assert orjson.loads(bucket.data["df.count.1.ckpt.1000"]) == whole, "the base is not changed by composing"

    # the next delta supersedes this one; the base stays while deltas build on it
    await m.on_checkpoint(ckpt_of(3.0, statedelta.changes(d1, 1.0)))
    await m.on_checkpoint(ckpt_of(4.0, statedelta.changes(d1, 1.0)))
    assert sorted(bucket.data) == ["df.count.1.ckpt.1000", "df.count.1.ckpt.3000", "df.count.1.ckpt.4000"]
    # a new whole one: the old base goes once nothing kept builds on it
    await m.on_checkpoint(ckpt_of(5.0, whole))
    await m.on_checkpoint(ckpt_of(6.0, statedelta.changes(d1, 5.0)))
    assert sorted(bucket.data) == ["df.count.1.ckpt.5000", "df.count.1.ckpt.6000"]


@pytest.mark.parametrize(
    ("since", "generation"), [(0.5, 1), (1.0, 2)], ids=["another base", "another generation"]
)
async def test_the_master_refuses_a_delta_on_anything_else(since: float, generation: int) -> None:
    store_ = CheckpointStore(generation=1)
    m, bucket, notices = mover(store_)
    await m.on_checkpoint(ckpt_of(1.0, {"counts": {f"k{i}": 1 for i in range(10)}}))
    await m.on_checkpoint(ckpt_of(2.0, statedelta.changes({"merge": {}}, since), generation=generation))
    assert [n.kept for n in notices] == [True, False]
    assert store_.kept[("df", "count")].snapshot.taken_at == 1.0
    assert sorted(bucket.data) == ["df.count.1.ckpt.1000"]


async def test_a_new_master_refuses_deltas_until_a_whole_one_comes() -> None:
    m, _, notices = mover(CheckpointStore())
    await m.on_checkpoint(ckpt_of(2.0, statedelta.changes({"merge": {}}, 1.0)))
    assert [n.kept for n in notices] == [False]


async def test_a_state_the_object_store_cannot_take_is_refused_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store_ = CheckpointStore()
    m, bucket, notices = mover(store_)

    async def full(name: str, raw: bytes) -> None:
        raise OSError("insufficient resources")

    put, bucket.put = bucket.put, full  # type: ignore[method-assign]
    whole = {"counts": {f"k{i}": 1 for i in range(10)}}
    with caplog.at_level("INFO", logger="echo_master.keeping"):
        for n in (1.0, 2.0, 3.0):
            await m.on_checkpoint(ckpt_of(n, whole))
        bucket.put = put  # type: ignore[method-assign]
        await m.on_checkpoint(ckpt_of(4.0, whole))
    assert [x.kept for x in notices] == [False, False, False, True]
    said = [r.getMessage() for r in caplog.records]
    assert sum("not kept" in s for s in said) == 1, said
    assert any("kept again after" in s for s in said), said
    assert store_.kept[("df", "count")].snapshot.taken_at == 4.0


def test_state_bytes_is_the_json_of_to_bytes() -> None:
    from echo_shared.messages import state_bytes

    state = {"counts": {"a": 1, "é": 2}, "windows": [[1, 2.5, None]], "n": 3}
    for msg in (
        ckpt_of(1.5, state),
        DeployTask(
            cmd_id="c",
            dataflow="df",
            task="t",
            generation=2,
            operator="stats.count_by_key",
            restore=TaskSnapshot(out_seq=4, state=state, tail={"c": [(3, "eA==")]}),
        ),
        DeployTask(cmd_id="c", dataflow="df", task="t", generation=2, operator="core.passthrough"),
    ):
        assert orjson.loads(state_bytes(msg)) == orjson.loads(msg.to_bytes())
        assert type(msg).from_bytes(state_bytes(msg)) == msg


def test_count_by_key_restores_what_it_is_given() -> None:
    op = CountByKey(CountByKeyConfig(key="k"))
    given = {"counts": {"a": 2, "b": 1}}
    op.restore(given)
    op.process({"k": "a", "seq": 1})
    assert op.counts == {"a": 3, "b": 1} and given["counts"]["a"] == 2, (
        "a copy: the given state is not changed"
    )
    op.restore({"counts": {"a": "4", 5: 1}})  # not as JSON parses it: converted
    assert op.counts == {"a": 4, "5": 1}


async def test_an_inline_whole_checkpoint_is_no_base() -> None:
    m, _, notices = mover(CheckpointStore())
    m.snapshots.inline_max = 1 << 20  # the state stays in Redis
    await m.on_checkpoint(ckpt_of(1.0, {"counts": {"a": 1}}))
    await m.on_checkpoint(ckpt_of(2.0, statedelta.changes({"merge": {}}, 1.0)))
    assert [(n.kept, n.base) for n in notices] == [(True, False), (False, False)]


def test_new_fields_are_left_out_at_their_defaults() -> None:
    """A peer of the version before refuses fields it does not know: they go only when set."""
    from echo_shared.messages import CheckpointStored, StopTask

    stop = StopTask(cmd_id="c", dataflow="df", task="t", generation=1)
    assert b"delta_from" not in stop.to_bytes() and StopTask.from_bytes(stop.to_bytes()) == stop
    moving = stop.model_copy(update={"delta_from": 2.5})
    assert StopTask.from_bytes(moving.to_bytes()).delta_from == 2.5
    notice = CheckpointStored(dataflow="df", task="t", generation=1, taken_at=1.0)
    assert b"kept" not in notice.to_bytes() and b"base" not in notice.to_bytes()
    assert CheckpointStored.from_bytes(notice.model_copy(update={"base": True}).to_bytes()).base
