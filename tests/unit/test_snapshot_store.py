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

    async def put(self, name: str, raw: bytes) -> None:
        self.data[name] = raw

    async def get(self, name: str) -> Any:
        self.gets += 1
        return SimpleNamespace(data=self.data[name])


def store() -> tuple[SnapshotStore, Bucket]:
    s = SnapshotStore(bus=None, names=Names("t"), inline_max=16)  # type: ignore[arg-type]
    b = Bucket()
    s._store = b  # type: ignore[assignment]
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
    from echo_master.moving import as_json
    from echo_shared.messages import TaskSnapshot

    state = {"counts": {"a": 1}, "list": [1, 2.5, None]}
    snap = TaskSnapshot.from_bytes(
        TaskSnapshot(out_seq=4, hwm={"p": 3}, state=state, kind="drain").to_bytes()
    )
    got = as_json(snap)
    assert got == snap.model_dump(mode="json")
    assert got["state"] is snap.state
