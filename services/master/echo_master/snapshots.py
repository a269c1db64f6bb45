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

An incremental checkpoint's object holds its changes and names the whole checkpoint's
object they apply to (``put_changes``); ``load`` composes them.

A move's pre-copy (``echo_shared.statedelta``) records a restore whose state is a
checkpoint's object plus the changes since it. ``resolve`` for the device that holds that
object staged (``staged_on``) sends it so, once; for any other device it composes the
whole state.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any, cast

import orjson
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig
from nats.js.errors import NotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, ObjectStore

from echo_shared import statedelta, stateslices
from echo_shared.messages import TaskSnapshot
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

log = logging.getLogger(__name__)

REF = "$object"
KEEP_SECONDS = 60.0
KEEP_MAX = 2
READ_TIMEOUT = 10.0  # seconds to wait for an object's next chunk
PUT_CHUNK = 512 * 1024  # bytes per chunk of a large state put (NATS's payload limit: 1 MB)


class SnapshotStore:
    def __init__(self, bus: NatsBus, names: Names, inline_max: int) -> None:
        self.bus = bus
        self.names = names
        self.inline_max = inline_max
        self._store: ObjectStore | None = None
        self._kept: dict[str, tuple[float, Any]] = {}  # name -> (until, state): drained states
        self._staged: dict[tuple[str, str], float] = {}  # (device, object) -> until: pre-copied

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
        state: Any = snapshot.get("state")
        if statedelta.is_staged(state):  # a staged base and a delta: the delta may be large
            delta = state[statedelta.DELTA]
            offloaded = await self.offload({"state": delta}, name, keep=keep)
            return {**snapshot, "state": {**state, statedelta.DELTA: offloaded["state"]}}
        if state is None or is_ref(state):
            return snapshot
        if isinstance(state, stateslices.RawState):  # a large state in slices, kept as it came
            if len(state) <= self.inline_max:
                return {**snapshot, "state": state.parse()}
            meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=PUT_CHUNK))
            await (await self._bucket()).put(name, cast(Any, _OnLoop(state.reader())), meta=meta)
            log.info("state of %s (%d bytes, in slices) kept in the object store", name, len(state))
            return {**snapshot, "state": {REF: name, "bytes": len(state)}}
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

    async def load(self, name: str, *, fresh: bool = False) -> Any:
        """An object's state: held in memory if it is (unless ``fresh``: a copy the caller
        may change), else read from the object store."""
        held = self._kept.get(name)
        if held is not None and held[0] > time.monotonic() and not fresh:
            return held[1]
        chunks, delta = await self.raw(name)  # an incremental checkpoint's: its base and changes
        state = stateslices.assemble(orjson.loads(b"".join(chunks)))
        return statedelta.apply(state, delta) if delta is not None else state

    async def raw(self, name: str) -> tuple[list[bytes], Any]:
        """An object's state as stored (JSON, in the object's chunks: 1 GB joined is seconds
        of page faults), and for an incremental checkpoint's the changes to apply to it (else
        None): for sending on without parsing it here."""
        chunks = await self._chunks(name)
        if chunks and chunks[0].startswith(b'{"' + statedelta.BASE.encode()):
            state = orjson.loads(b"".join(chunks))
            if statedelta.is_staged(state):
                return await self._chunks(state[statedelta.BASE]), state[statedelta.DELTA]
        return chunks, None

    async def _chunks(self, name: str) -> list[bytes]:
        """An object's bytes, in its chunks. Not nats-py's ``ObjectStore.get``, which appends
        chunk after chunk to one bytes object (quadratic: 8.5 s for 100 MB here): its chunks
        are gathered, and checked against the object's digest as they come."""
        bucket = await self._bucket()
        info = await bucket.get_info(name)
        size = info.size or 0
        if size == 0:
            return [b"null"]
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.names.state_bucket, obj=info.nuid)
        sub = await self.bus.js.subscribe(
            subject, ordered_consumer=True, pending_bytes_limit=max(size, 1 << 26)
        )
        chunks: list[bytes] = []
        got = 0
        digest = hashlib.sha256()
        try:
            while got < size:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                chunks.append(msg.data)
                digest.update(msg.data)
                got += len(msg.data)
        finally:
            await sub.unsubscribe()
        stored = (info.digest or "").replace(OBJ_DIGEST_TYPE, "")
        if digest.digest() != base64.urlsafe_b64decode(stored):
            raise ValueError(f"state object {name}: its digest does not match its {got} bytes")
        return chunks

    async def put_changes(self, name: str, base: str, delta: Any) -> dict[str, Any]:
        """An incremental checkpoint's state as object ``name``: the changes ``delta`` on top
        of the object ``base`` (``load`` composes them); its reference."""
        raw = orjson.dumps(statedelta.staged(base, 0, delta))
        await (await self._bucket()).put(name, raw)
        return {REF: name, "bytes": len(raw)}

    def staged_on(self, device: str, name: str, hold_seconds: float) -> None:
        """``device`` holds the state of object ``name`` staged (for ``hold_seconds``)."""
        now = time.monotonic()
        self._staged = {k: v for k, v in self._staged.items() if v > now}
        self._staged[(device, name)] = now + hold_seconds

    async def resolve(
        self, snapshot: dict[str, Any] | None, device: str | None = None
    ) -> dict[str, Any] | None:
        """The snapshot with its state read back from the object store, if it was offloaded;
        a staged base plus delta as it is for the ``device`` holding the base, whole for others."""
        if snapshot is None:
            return snapshot
        state: Any = snapshot.get("state")
        if is_ref(state):
            return {**snapshot, "state": await self.load(state[REF])}
        if not statedelta.is_staged(state):
            return snapshot
        base, delta = state[statedelta.BASE], state[statedelta.DELTA]
        if is_ref(delta):
            delta = await self.load(delta[REF])
        until = self._staged.pop((device or "", base), None)  # once: the device uses it up
        if until is not None and until > time.monotonic():
            return {**snapshot, "state": statedelta.staged(base, state["bytes"], delta)}
        log.info("state %s is not staged on %s (any more): it goes whole", base, device or "its device")
        whole = statedelta.apply(await self.load(base, fresh=True), delta)
        return {**snapshot, "state": whole}


class _OnLoop:
    """A reader nats-py's ``ObjectStore.put`` reads on the loop: it hands a reader with
    ``readinto`` to a thread per chunk (4 s per 100 MB here, for copies of 128 KiB), but
    reads a text file's ``buffer`` in place, as it does bytes."""

    def __init__(self, reader: stateslices.PiecesReader) -> None:
        self.buffer = reader


def as_json(snap: TaskSnapshot) -> dict[str, Any]:
    """The snapshot as JSON data, its operator state as it came (parsed from JSON already):
    a dump would walk every key of a state of millions (a quarter second per 100 MB)."""
    return {**snap.model_dump(mode="json", exclude={"state"}), "state": snap.state}


def is_ref(state: object) -> bool:
    return isinstance(state, dict) and REF in state and len(state) == 2


def objects_of(snapshot: dict[str, Any] | None) -> set[str]:
    """The objects a recorded snapshot's state refers to (its own, or a staged base and delta)."""
    state: Any = snapshot.get("state") if snapshot else None
    if is_ref(state):
        return {state[REF]}
    if statedelta.is_staged(state):
        delta = state[statedelta.DELTA]
        return {state[statedelta.BASE]} | ({delta[REF]} if is_ref(delta) else set())
    return set()


def object_name(dataflow: str, task: str, generation: int, kind: str, taken_at: float) -> str:
    return f"{dataflow}.{task}.{generation}.{kind}.{int(taken_at * 1000)}"
