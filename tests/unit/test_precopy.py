"""A move's pre-copy: a checkpoint's state staged on the target, then only the changes since.

The pieces one by one: the delta format (``echo_shared.statedelta``); ``stats.count_by_key``
tracking what changed since a snapshot; the agent's checkpoints remembering each one's
epoch; the target holding staged states (``StagedStates``); the master resolving a staged
restore for the device that holds its base and composing it for any other, and keeping a
staged base from being deleted while a move relies on it. The whole move runs on real
brokers in ``tests/e2e/test_migration.py`` (``test_large_state_goes_through_the_object_store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from echo_agent import staging
from echo_agent.dataplane import checkpoints
from echo_agent.dataplane.channels import Outputs
from echo_agent.operators.builtin import CountByKey
from echo_agent.staging import StagedStateMissing, StagedStates
from echo_shared import statedelta
from echo_shared.catalogue.core import CountByKeyConfig
from echo_shared.messages import COMMAND_ADAPTER, StageState, StopTask, TaskSnapshot
from echo_shared.names import Names
from echo_shared.operators import lookup
from tests.unit.test_agent_checkpoints import FakeTransport, make_checkpoints
from tests.unit.test_snapshot_store import CheckpointStore, checkpoint, mover, store

# ---------------------------------------------------------------- the delta format


def test_a_delta_merges_drops_and_sets_fields() -> None:
    state = {"counts": {"a": 1, "b": 2, "c": 3}, "next": 4}
    delta = {
        "merge": {"counts": {"a": 5, "d": 1}, "seen": {"x": 1}},
        "drop": {"counts": ["c", "gone"]},
        "set": {"next": 9},
    }
    assert statedelta.apply(state, delta) == {"counts": {"a": 5, "b": 2, "d": 1}, "next": 9, "seen": {"x": 1}}


@pytest.mark.parametrize(
    ("state", "delta", "says"),
    [
        ([1, 2], {"set": {"a": 1}}, "JSON object"),
        ({"a": 1}, {"replace": {}}, "merge, drop and set"),
        ({"a": 1}, {"merge": {"a": {"k": 1}}}, "both must be objects"),
        ({"a": {}}, {"drop": {"a": "k"}}, "list of keys"),
    ],
)
def test_a_delta_that_does_not_fit_is_refused(state: Any, delta: Any, says: str) -> None:
    with pytest.raises(statedelta.DeltaError, match=says):
        statedelta.apply(state, delta)


def test_the_markers_are_told_apart() -> None:
    d = statedelta.changes({"merge": {}}, 12.5)
    s = statedelta.staged("df.t.1.ckpt.1", 100, {"merge": {}})
    assert statedelta.is_changes(d) and not statedelta.is_staged(d)
    assert statedelta.is_staged(s) and not statedelta.is_changes(s)
    assert not statedelta.is_staged({"counts": {"$base": 1, "$delta": 2, "bytes": 3}})  # a user's state


def test_the_commands_carry_it() -> None:
    stop = COMMAND_ADAPTER.validate_json(
        StopTask(cmd_id="c", dataflow="df", task="t", generation=1, final=False, delta_from=12.25).to_bytes()
    )
    assert isinstance(stop, StopTask) and stop.delta_from == 12.25
    stage = COMMAND_ADAPTER.validate_json(
        StageState(
            cmd_id="c", dataflow="df", task="t", generation=2, name="o", state={"counts": {"a": 1}}
        ).to_bytes()
    )
    assert isinstance(stage, StageState) and stage.state == {"counts": {"a": 1}}
    info = lookup("stats.count_by_key")
    assert info is not None and info.deltas
    assert not lookup("stats.window_aggregate").deltas  # type: ignore[union-attr]


# ---------------------------------------------------------------- the operator


def counted(op: CountByKey, keys: list[str]) -> None:
    for k in keys:
        op.process({"k": k, "seq": 0})


def test_count_by_key_composes_from_any_of_its_snapshots() -> None:
    rng = random.Random(7)
    op = CountByKey(CountByKeyConfig(key="k"))
    counted(op, [f"k{rng.randrange(50)}" for _ in range(500)])
    bases: list[tuple[int, bytes]] = []
    for _ in range(4):
        base = orjson.dumps(op.snapshot())  # what a checkpoint ships
        epoch = op.epoch()
        assert epoch is not None
        bases.append((epoch, base))
        counted(op, [f"k{rng.randrange(80)}" for _ in range(rng.randrange(1, 60))])
    whole = orjson.loads(orjson.dumps(op.counts))
    for epoch, base in bases:
        delta = op.delta(epoch)
        assert statedelta.apply(orjson.loads(base), delta) == {"counts": whole}, f"from epoch {epoch}"
    # the changes since the latest snapshot are a few keys, not the state
    assert len(op.delta(bases[-1][0])["merge"]["counts"]) < 60 < len(whole)


def test_count_by_key_does_not_guess_changes_older_than_it_tracks() -> None:
    op = CountByKey(CountByKeyConfig(key="k"))
    counted(op, ["a", "b"])
    op.snapshot()
    first = op.epoch()
    assert first is not None
    for i in range(CountByKey.EPOCHS_KEPT + 5):
        counted(op, [f"k{i % 7}", "a"])
        op.snapshot()
    assert first not in op._touched
    with pytest.raises(ValueError, match="no longer tracked"):
        op.delta(first)  # the caller sends the whole state
    counted(op, ["late"])
    recent = op.epoch()
    assert recent is not None and recent in op._touched
    assert op.delta(recent) == {"merge": {"counts": {"late": 1}}}


def test_count_by_key_says_nothing_before_its_first_snapshot() -> None:
    op = CountByKey(CountByKeyConfig(key="k"))
    counted(op, ["a", "b"])
    assert op.epoch() == 0
    with pytest.raises(ValueError, match="first snapshot"):
        op.delta(0)


# ---------------------------------------------------------------- the agent


async def test_checkpoints_remember_the_epoch_each_began(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(100, 200))
    monkeypatch.setattr(checkpoints.time, "time", lambda: float(next(clock)))
    out = Outputs(FakeTransport(), "p", 1, [], Names("t"))
    op = CountByKey(CountByKeyConfig(key="k"))
    ck = make_checkpoints(out, lambda payload: None, snapshot=op.snapshot, epoch=op.epoch)
    for _ in range(3):
        counted(op, ["a"])
        ck.take()
        assert ck._inflight is not None
        ck._inflight.cancel()  # its commit is another test's business
        with contextlib.suppress(asyncio.CancelledError):
            await ck._inflight
    assert [ck.epoch_of(t) for t in (100.0, 101.0, 102.0)] == [1, 2, 3]
    assert ck.epoch_of(99.0) is None
    # without an operator that tracks its changes, nothing is remembered
    plain = make_checkpoints(out, lambda payload: None)
    plain.take()
    assert plain.epoch_of(103.0) is None
    assert plain._inflight is not None
    plain._inflight.cancel()


def test_a_staged_state_is_composed_once() -> None:
    held = StagedStates()
    held.put("o1", {"counts": {"a": 1, "b": 1}})
    snap = TaskSnapshot(out_seq=3, state=statedelta.staged("o1", 10, {"merge": {"counts": {"b": 2}}}))
    assert held.restore(snap).state == {"counts": {"a": 1, "b": 2}}
    with pytest.raises(StagedStateMissing, match="o1"):
        held.restore(snap)  # used up
    plain = TaskSnapshot(out_seq=1, state={"counts": {}})
    assert held.restore(plain) is plain


def test_staged_states_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    held = StagedStates(hold_seconds=10.0, hold_max=2)
    for n in ("o1", "o2", "o3"):
        held.put(n, {"counts": {}})
    assert len(held) == 2
    snap = TaskSnapshot(state=statedelta.staged("o1", 1, {}))
    with pytest.raises(StagedStateMissing):
        held.restore(snap)  # the oldest went for the third
    now = staging.time.monotonic()
    monkeypatch.setattr(staging.time, "monotonic", lambda: now + 11.0)
    with pytest.raises(StagedStateMissing, match="expired"):
        held.restore(TaskSnapshot(state=statedelta.staged("o3", 1, {})))


# ---------------------------------------------------------------- the master


async def test_a_staged_restore_goes_as_it_is_only_to_the_device_holding_its_base() -> None:
    snaps, bucket = store()
    base = {"counts": {f"k{i}": 1 for i in range(20)}}
    bucket.data["df.count.1.ckpt.5000"] = orjson.dumps(base)
    delta = {"merge": {"counts": {"k3": 2, "new": 1}}}
    kept = await snaps.offload(
        {"out_seq": 9, "state": statedelta.staged("df.count.1.ckpt.5000", 300, delta)},
        "df.count.1.drain.6",
        keep=True,
    )
    # the delta is large here (inline max 16 bytes): an object of its own, held for the deploy
    assert kept["state"]["$delta"] == {"$object": "df.count.1.drain.6", "bytes": len(orjson.dumps(delta))}
    snaps.staged_on("fog-2", "df.count.1.ckpt.5000", 60.0)
    to_other = await snaps.resolve(kept, "fog-3")
    assert to_other is not None and to_other["state"] == {"counts": {**base["counts"], "k3": 2, "new": 1}}
    to_target = await snaps.resolve(kept, "fog-2")
    assert to_target is not None and to_target["state"] == statedelta.staged(
        "df.count.1.ckpt.5000", 300, delta
    )
    again = await snaps.resolve(kept, "fog-2")  # the target used its base up: whole now
    assert again is not None and again["state"]["counts"]["new"] == 1
    assert bucket.data["df.count.1.ckpt.5000"] == orjson.dumps(base), "composing never changes the base"


async def test_a_base_a_move_relies_on_is_not_deleted_until_the_move_is_over() -> None:
    m, bucket, _ = mover(CheckpointStore())
    for n in range(1, 3):
        await m.on_checkpoint(checkpoint(n))
    base = "df.count.1.ckpt.1000"
    m.keeper._pinned.add(base)
    for n in range(3, 5):
        await m.on_checkpoint(checkpoint(n))
    assert base in bucket.data, "pinned: kept while the move stages it"
    await m.keeper.unpin(base)
    assert base not in bucket.data, "asked to go meanwhile: gone once the move is over"


async def test_a_base_the_task_restores_from_is_kept() -> None:
    staged = statedelta.staged("df.count.1.ckpt.1000", 10, {"$object": "df.count.1.drain.7", "bytes": 5})
    m, bucket, _ = mover(CheckpointStore(restore={"out_seq": 1, "state": staged}))
    for n in range(1, 5):
        await m.on_checkpoint(checkpoint(n))
    assert "df.count.1.ckpt.1000" in bucket.data


class StageLink:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.staged: list[tuple[str, StageState]] = []

    async def stage(
        self, device: str, cmd: StageState, timeout: float, *, payload: bytes | list[bytes] | None = None
    ) -> Any:
        # what the agent gets: the payload as sent (in pieces, joined), read as a command
        if isinstance(payload, list):
            payload = b"".join(payload)
        got = COMMAND_ADAPTER.validate_json(payload) if payload is not None else cmd
        assert isinstance(got, StageState)
        self.staged.append((device, got))
        return SimpleNamespace(
            ok=self.ok, reason="" if self.ok else "stale", state=SimpleNamespace(value="running")
        )


def moving_task(
    store_: CheckpointStore, link: StageLink, state: Any, operator: str = "stats.count_by_key"
) -> Any:
    from echo_master.moving import TaskMover
    from echo_shared.messages import TaskCheckpoint
    from echo_shared.models import TaskRecord

    snaps, bucket = store()
    m = TaskMover(store=store_, reconciler=SimpleNamespace(link=link), snapshots=snaps)  # type: ignore[arg-type]
    ckpt = TaskCheckpoint(
        device="fog-1",
        dataflow="df",
        task="count",
        generation=1,
        snapshot=TaskSnapshot(state=state, taken_at=7.5),
        ts=7.5,
    )

    async def latest(df_id: str, task: str) -> Any:
        return ckpt

    store_.checkpoint = latest  # type: ignore[attr-defined]
    spec = SimpleNamespace(task=lambda t: SimpleNamespace(resources=SimpleNamespace(worker=False)))
    df = SimpleNamespace(id="df", effective=spec)
    rec = TaskRecord(id="count", operator=operator, device="fog-1", generation=1)
    req = SimpleNamespace(target="fog-2")
    return m, bucket, df, rec, req


async def test_the_master_stages_a_large_checkpointed_state_on_the_target() -> None:
    ref = {"$object": "df.count.1.ckpt.7500", "bytes": 30}
    link = StageLink()
    m, bucket, df, rec, req = moving_task(CheckpointStore(), link, ref)
    bucket.data["df.count.1.ckpt.7500"] = orjson.dumps({"counts": {"a": 3}})
    staged = await m._stage(df, rec, req)
    assert staged is not None and (staged.taken_at, staged.name, staged.size) == (
        7.5,
        "df.count.1.ckpt.7500",
        30,
    )
    ((device, cmd),) = link.staged
    assert device == "fog-2" and cmd.generation == 2 and cmd.state == {"counts": {"a": 3}}
    assert cmd.delta is None
    assert "df.count.1.ckpt.7500" in m.keeper._pinned
    assert ("fog-2", "df.count.1.ckpt.7500") in m.snapshots._staged


async def test_an_incremental_checkpoint_is_staged_as_its_base_and_changes() -> None:
    ref = {"$object": "df.count.1.ckpt.7500", "bytes": 30}
    link = StageLink()
    m, bucket, df, rec, req = moving_task(CheckpointStore(), link, ref)
    bucket.data["df.count.1.ckpt.5000"] = orjson.dumps({"counts": {"a": 3, "b": 1}})
    delta = {"merge": {"counts": {"b": 2}}}
    await m.snapshots.put_changes("df.count.1.ckpt.7500", "df.count.1.ckpt.5000", delta)
    m.keeper._bases["df.count.1.ckpt.7500"] = "df.count.1.ckpt.5000"
    assert await m._stage(df, rec, req) is not None
    ((_, cmd),) = link.staged
    assert cmd.state == {"counts": {"a": 3, "b": 1}} and cmd.delta == delta
    assert m.keeper._pinned == {"df.count.1.ckpt.7500", "df.count.1.ckpt.5000"}, "the base is pinned too"
    await m.keeper.unpin("df.count.1.ckpt.7500")
    assert not m.keeper._pinned


@pytest.mark.parametrize(
    ("operator", "state", "ok"),
    [
        ("stats.count_by_key", {"counts": {"a": 3}}, True),  # small: inline, goes whole
        ("stats.window_aggregate", {"$object": "df.count.1.ckpt.7500", "bytes": 30}, True),  # no deltas
        ("stats.count_by_key", {"$object": "df.count.1.ckpt.7500", "bytes": 30}, False),  # target refused
    ],
)
async def test_no_stage_where_it_does_not_apply(operator: str, state: Any, ok: bool) -> None:
    link = StageLink(ok=ok)
    m, bucket, df, rec, req = moving_task(CheckpointStore(), link, state, operator)
    bucket.data["df.count.1.ckpt.7500"] = b"{}"
    assert await m._stage(df, rec, req) is None
    assert not m.keeper._pinned
    assert bool(link.staged) == (not ok)


def test_count_by_key_asked_again_since_the_same_epoch_stays_right() -> None:
    """Incremental checkpoints ask since the same whole one each time, over more epochs
    than it lists: each answer must still be every change since."""
    rng = random.Random(3)
    op = CountByKey(CountByKeyConfig(key="k"))
    counted(op, [f"k{i}" for i in range(300)])
    base = orjson.dumps(op.snapshot())
    since = op.epoch()
    assert since is not None
    for i in range(CountByKey.EPOCHS_KEPT * 2):
        counted(op, [f"k{rng.randrange(400)}" for _ in range(rng.randrange(0, 5))])
        op.snapshot()
        if i % 3 == 0 or i > CountByKey.EPOCHS_KEPT:
            got = op.delta(since)
            assert statedelta.apply(orjson.loads(base), got) == {"counts": op.counts}, f"after {i + 1} epochs"
