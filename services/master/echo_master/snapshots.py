"""Large operator state lives in the NATS object store, not in Redis.

A snapshot (a drained copy's, or a periodic checkpoint) is a small record of positions
plus the operator's ``state``. When that state's JSON is larger than
``state_inline_max_bytes`` it is put into the object store ``{NS}_STATE`` under a name
unique to the task, generation and time, and the snapshot kept in Redis holds a
reference ``{"$object": name, "bytes": n}`` in its place. A deploy that restores the
snapshot reads the state back (``resolve``), so agents always receive it whole.

A drained copy's state is needed again at once, by the deploy of the next copy: ``offload``
with ``keep`` also holds it in memory for ``KEEP_SECONDS`` (at most ``KEEP_MAX`` of them),
and ``resolve`` takes it from there instead of reading it back from the object store and
parsing it again (100 MB: seconds of a migration's downtime). The object store keeps the
durable copy either way: a retried deploy after that, or another master, reads it there.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from nats.js.api import ObjectStoreConfig
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

log = logging.getLogger(__name__)

REF = "$object"
KEEP_SECONDS = 60.0
KEEP_MAX = 2


class SnapshotStore:
    def __init__(self, bus: NatsBus, names: Names, inline_max: int) -> None:
        self.bus = bus
        self.names = names
        self.inline_max = inline_max
        self._store: ObjectStore | None = None
        self._kept: dict[str, tuple[float, Any]] = {}  # name -> (until, state): drained states

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            # (nats-py takes the bucket's name from its own argument, whatever a config says)
            self._store = await self.bus.js.create_object_store(
                self.names.state_bucket, config=ObjectStoreConfig(replicas=self.bus.replicas)
            )
        return self._store

    async def offload(self, snapshot: dict[str, Any], name: str, *, keep: bool = False) -> dict[str, Any]:
        """The snapshot to keep in Redis: its state moved to the object store if large
        (``keep``: and held in memory a while, for the deploy that restores it next)."""
        state = snapshot.get("state")
        if state is None or is_ref(state):
            return snapshot
        raw = orjson.dumps(state)
        if len(raw) <= self.inline_max:
            return snapshot
        await (await self._bucket()).put(name, raw)
        log.info("state of %s (%d bytes) kept in the object store", name, len(raw))
        if keep:
            self._hold(name, state)
        return {**snapshot, "state": {REF: name, "bytes": len(raw)}}

    async def delete(self, name: str) -> None:
        """Drop a state nothing refers to any more (gone already: fine)."""
        self._kept.pop(name, None)
        try:
            await (await self._bucket()).delete(name)
        except NotFoundError:
            pass

    def _hold(self, name: str, state: Any) -> None:
        now = time.monotonic()
        self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        while len(self._kept) >= KEEP_MAX:
            del self._kept[next(iter(self._kept))]
        self._kept[name] = (now + KEEP_SECONDS, state)

    async def resolve(self, snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
        """The snapshot with its state read back from the object store, if it was offloaded."""
        if snapshot is None or not is_ref(snapshot.get("state")):
            return snapshot
        name = snapshot["state"][REF]
        held = self._kept.get(name)
        if held is not None and held[0] > time.monotonic():
            return {**snapshot, "state": held[1]}
        got = await (await self._bucket()).get(name)
        return {**snapshot, "state": orjson.loads(got.data or b"null")}


def is_ref(state: object) -> bool:
    return isinstance(state, dict) and REF in state and len(state) == 2


def object_name(dataflow: str, task: str, generation: int, kind: str, taken_at: float) -> str:
    return f"{dataflow}.{task}.{generation}.{kind}.{int(taken_at * 1000)}"
