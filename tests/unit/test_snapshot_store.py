"""Large states go to the object store; a drained copy's is also held in memory for the
deploy that restores it next (no read back, no parse), for a while and a few at most."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from echo_master import snapshots
from echo_master.snapshots import REF, SnapshotStore
from echo_shared.names import Names


class Bucket:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    async def put(self, name: str, raw: Any, meta: Any = None) -> None:
        raw = getattr(raw, "buffer", raw)  # a text-like wrapper: nats-py reads its buffer
        if hasattr(raw, "readinto"):  # a reader, as nats-py takes one: read in chunks
            out, chunk = bytearray(), bytearray(1000)
            while n := raw.readinto(chunk):
                out += chunk[:n]
            raw = bytes(out)
        self.data[name] = raw

    async def get(self, name: str) -> Any:
        self.gets += 1
        return SimpleNamespace(data=self.data[name])

    async def delete(self, name: str) -> None:
        del self.data[name]


def store() -> tuple[SnapshotStore, Bucket]:
    s = SnapshotStore(bus=None, names=Names("t"), inline_max=16)  # type: ignore[arg-type]
    b = Bucket()
    s._store = b  # type: ignore[assignment]

    async def chunks(name: str) -> list[bytes]:  # the chunked read, as the bucket has it
        return [(await b.get(name)).data]

    s._chunks = chunks  # type: ignore[method-assign]
    return s, b


async def test_a_drained_state_is_restored_from_memory_and_kept_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s, b = store()
    state = {"counts": {f"k{i}": i for i in range(100)}}
    kept = await s.offload({"out_seq": 3, "state": state}, "df.t.1.drain.1", keep=True)
    assert kept["state"] == {REF: "df.t.1.drain.1", "bytes": len(orjson.dumps(state))}
    assert orjson.loads(b.data["df.t.1.drain.1"]) == state, "the object store has it whatever happens"
    back = await s.resolve(kept)
    assert back is not None and back["state"] is state and back["out_seq"] == 3
    assert b.gets == 0

    # a checkpoint is not held: it is read back
    ck = await s.offload({"state": state}, "df.t.1.ckpt.2")
    assert (await s.resolve(ck)) == {"state": state} and b.gets == 1

    # after KEEP_SECONDS, from the object store again
    now = snapshots.time.monotonic()
    monkeypatch.setattr(snapshots.time, "monotonic", lambda: now + snapshots.KEEP_SECONDS + 1)
    assert (await s.resolve(kept))["state"] == state and b.gets == 2  # type: ignore[index]


async def test_at_most_keep_max_are_held() -> None:
    s, b = store()
    refs = [
        await s.offload({"state": {"n": "x" * 20, "i": i}}, f"df.t.{i}.drain.1", keep=True)
        for i in range(snapshots.KEEP_MAX + 1)
    ]
    for r in refs[1:]:
        await s.resolve(r)
    assert b.gets == 0
    assert (await s.resolve(refs[0]))["state"]["i"] == 0 and b.gets == 1  # type: ignore[index]


async def test_a_small_state_stays_inline() -> None:
    s, b = store()
    snap = {"state": {"n": 1}}
    assert await s.offload(snap, "df.t.1.drain.1", keep=True) is snap
    assert not b.data


def test_a_snapshot_as_json_keeps_its_state_as_it_came() -> None:
    from echo_master.snapshots import as_json
    from echo_shared.messages import TaskSnapshot

    state = {"counts": {"a": 1}, "list": [1, 2.5, None]}
    snap = TaskSnapshot.from_bytes(
        TaskSnapshot(out_seq=4, hwm={"p": 3}, state=state, kind="drain").to_bytes()
    )
    got = as_json(snap)
    assert got == snap.model_dump(mode="json")
    assert got["state"] is snap.state


class CheckpointStore:
    """The master's store, as far as checkpoints go: the latest kept per task."""

    def __init__(self, generation: int = 1, restore: dict[str, Any] | None = None) -> None:
        self.generation = generation
        self.kept: dict[tuple[str, str], Any] = {}
        self.restore = restore

    async def save_checkpoint(self, ckpt: Any) -> bool:
        if ckpt.generation != self.generation:
            return False
        self.kept[(ckpt.dataflow, ckpt.task)] = ckpt
        return True

    async def task_record(self, df_id: str, task: str) -> Any:
        return SimpleNamespace(restore=self.restore)


def mover(store_: CheckpointStore) -> tuple[Any, Bucket, list[Any]]:
    from echo_master.moving import TaskMover

    snaps, bucket = store()
    notices: list[Any] = []
    link = SimpleNamespace(notify=lambda device, msg: notices.append(msg))
    m = TaskMover(store=store_, reconciler=SimpleNamespace(link=link), snapshots=snaps)  # type: ignore[arg-type]
    return m, bucket, notices


def checkpoint(n: int, generation: int = 1) -> Any:
    from echo_shared.messages import TaskCheckpoint, TaskSnapshot

    snap = TaskSnapshot(out_seq=n, state={"counts": {"k": n, "pad": "x" * 40}}, taken_at=float(n))
    return TaskCheckpoint(
        device="fog-1", dataflow="df", task="count", generation=generation, snapshot=snap, ts=float(n)
    )


async def test_superseded_checkpoint_states_are_deleted_keeping_one_back() -> None:
    m, bucket, notices = mover(CheckpointStore())
    for n in range(1, 6):
        await m.on_checkpoint(checkpoint(n))
    assert len(notices) == 5
    # the kept one and the one it replaced; the three before are gone
    assert sorted(bucket.data) == ["df.count.1.ckpt.4000", "df.count.1.ckpt.5000"]


async def test_a_stale_checkpoint_state_is_deleted_at_once() -> None:
    m, bucket, notices = mover(CheckpointStore(generation=2))
    await m.on_checkpoint(checkpoint(1, generation=1))
    assert notices == [] and bucket.data == {}


async def test_a_state_the_task_restores_from_is_kept() -> None:
    ref = {REF: "df.count.1.ckpt.1000", "bytes": 10}
    m, bucket, _ = mover(CheckpointStore(restore={"out_seq": 1, "state": ref}))
    for n in range(1, 5):
        await m.on_checkpoint(checkpoint(n))
    assert sorted(bucket.data) == ["df.count.1.ckpt.1000", "df.count.1.ckpt.3000", "df.count.1.ckpt.4000"]
