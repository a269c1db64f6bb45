"""Periodic checkpoints arriving from the agents (``TaskCheckpoint``): which the master
keeps, and the objects their states live in.

A checkpoint is kept in Redis, one per task, only when it comes from the task's current
generation; a large state goes to the object store (``SnapshotStore``). Once kept, the
agent is told (``CheckpointStored``): only then may the task report progress up to it.

Incremental checkpoints (``echo_shared.statedelta``): a checkpoint of only the changes since
a whole one is kept when that whole one is the latest large whole checkpoint kept of the
same copy; its object names that base, which stays while checkpoints kept build on it. Any
other is refused (``CheckpointStored.kept`` false), and the agent sends the next one whole.

Every checkpoint's state is an object of its own: without deleting them, a task with a
large state fills JetStream's storage, and then every checkpoint fails ("insufficient
resources") and its flow stops. A checkpoint's objects are deleted once two newer ones are
kept (one stays as slack for a move that read it a moment ago), unless the task's record
restores from them or a move under way relies on them (``pin``). Tracked in memory, not
read back per checkpoint: a new leader leaks one per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from echo_shared import statedelta, stateslices
from echo_shared.messages import CheckpointStored, TaskCheckpoint

from .agents_link import AgentLink
from .snapshots import SnapshotStore, as_json, is_ref, object_name, objects_of
from .store import DataflowStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Whole:
    """A task's latest large whole checkpoint the master kept."""

    generation: int
    taken_at: float
    name: str  # its object


class CheckpointKeeper:
    def __init__(
        self, store: DataflowStore, link: Callable[[], AgentLink], snapshots: SnapshotStore | None
    ) -> None:
        self.store = store
        self._link = link  # the agents' link (the reconciler's, set once it is up)
        self.snapshots = snapshots
        # by task: the objects of its kept checkpoint's state, and of the one it replaced
        self._current: dict[tuple[str, str], set[str]] = {}
        self._superseded: dict[tuple[str, str], set[str]] = {}
        # incremental checkpoints: the latest large whole one kept per task, which they build
        # on, and each incremental one's object -> its base's (in memory: a new leader
        # refuses incremental ones until a whole one comes, which the agent then sends)
        self._whole: dict[tuple[str, str], Whole] = {}
        self._bases: dict[str, str] = {}
        # objects a move under way relies on (a staged base): not deleted until it is over
        self._pinned: set[str] = set()
        self._deferred: dict[str, tuple[str, str]] = {}  # pinned objects asked to go meanwhile
        self._failing: dict[tuple[str, str], float] = {}  # tasks whose states cannot be stored: since

    async def on_checkpoint(self, ckpt: TaskCheckpoint) -> None:
        key = (ckpt.dataflow, ckpt.task)
        if isinstance(ckpt.snapshot.state, stateslices.RawState) and self.snapshots is None:
            ckpt.snapshot.state = ckpt.snapshot.state.parse()  # kept in Redis, then: parsed
        snap = ckpt.snapshot
        objects: set[str] = set()  # what the checkpoint's state lives in
        whole: Whole | None = None  # a large whole one: incremental ones may build on it
        base = self._whole.get(key)
        if statedelta.is_changes(snap.state) and (
            self.snapshots is None
            or base is None
            or base.generation != ckpt.generation
            or base.taken_at != snap.state[statedelta.SINCE]
        ):
            log.info(
                "incremental checkpoint of %s/%s refused: its base is not the latest whole one kept", *key
            )
            self._notify(ckpt, kept=False)
            return
        if self.snapshots is not None:
            name = object_name(ckpt.dataflow, ckpt.task, ckpt.generation, "ckpt", snap.taken_at)
            ref: Any
            try:
                if statedelta.is_changes(snap.state):
                    assert base is not None
                    ref = await self.snapshots.put_changes(name, base.name, snap.state[statedelta.DELTA])
                    objects, self._bases[name] = {name, base.name}, base.name
                else:
                    kept = await self.snapshots.offload(as_json(snap), name)
                    ref = kept.get("state")
                    if is_ref(ref):
                        objects = {name}
                        whole = Whole(ckpt.generation, snap.taken_at, name)
            except Exception as e:  # the object store is full or out of reach: not kept, said once
                if key not in self._failing:
                    self._failing[key] = time.monotonic()
                    log.warning("checkpoints of %s/%s not kept: the object store: %s", *key, e)
                self._notify(ckpt, kept=False)
                return
            began = self._failing.pop(key, None)
            if began is not None:
                log.info("checkpoints of %s/%s kept again after %.1fs", *key, time.monotonic() - began)
            ckpt = ckpt.model_copy(update={"snapshot": snap.model_copy(update={"state": ref})})
        stored = await self.store.save_checkpoint(ckpt)
        if not stored:
            log.debug("checkpoint of %s/%s gen %d is stale", ckpt.dataflow, ckpt.task, ckpt.generation)
            for n in objects - set(self._bases.values()) - {b.name for b in self._whole.values()}:
                await self.forget(ckpt.dataflow, ckpt.task, n)  # kept nowhere
            return
        # now, not at the broker's acknowledgement, may the task let its producers forget
        # what came before it (a failover restores what is kept here)
        self._notify(ckpt, kept=True, base=whole is not None)
        if not statedelta.is_changes(snap.state):
            if whole is not None:
                self._whole[key] = whole
            else:
                self._whole.pop(key, None)
        replaced = self._current.pop(key, set())
        self._current[key] = objects
        older = self._superseded.pop(key, set())
        self._superseded[key] = replaced
        for n in sorted(older - objects - replaced):
            await self.forget(ckpt.dataflow, ckpt.task, n)

    def _notify(self, ckpt: TaskCheckpoint, *, kept: bool, base: bool = False) -> None:
        self._link().notify(
            ckpt.device,
            CheckpointStored(
                dataflow=ckpt.dataflow,
                task=ckpt.task,
                generation=ckpt.generation,
                taken_at=ckpt.snapshot.taken_at,
                kept=kept,
                base=base,
            ),
        )

    async def forget(self, df_id: str, task: str, name: str) -> None:
        """Delete a checkpoint's state from the object store, unless the task's record still
        restores from it (a failover recorded it), or a move under way relies on it. Every
        checkpoint is an object of its own: without this, a task with a large state fills
        JetStream's storage, and then every checkpoint fails ("insufficient resources") and
        its flow stops."""
        assert self.snapshots is not None
        if name in self._pinned:
            self._deferred[name] = (df_id, task)
            return
        try:
            rec = await self.store.task_record(df_id, task)
            if name in self._pinned:  # pinned while the record was read
                self._deferred[name] = (df_id, task)
                return
            needed = objects_of(rec.restore) if rec is not None else set()
            needed |= {self._bases[n] for n in needed if n in self._bases}
            if name in needed:
                return
            await self.snapshots.delete(name)
            self._bases.pop(name, None)
        except Exception as e:  # the object stays: a leak, not a failure of the checkpoint
            log.warning("state %s of %s/%s not deleted: %s", name, df_id, task, e)

    def base_of(self, name: str) -> str | None:
        """The whole checkpoint's object an incremental one's object builds on."""
        return self._bases.get(name)

    def pin(self, name: str) -> None:
        """A move relies on the object (and its base): kept until ``unpin``."""
        self._pinned |= {name, self._bases.get(name, name)}

    async def unpin(self, name: str) -> None:
        """The move no longer relies on the object: delete it if it was asked meanwhile."""
        for n in {name, self._bases.get(name, name)}:
            self._pinned.discard(n)
            left = self._deferred.pop(n, None)
            if left is not None:
                await self.forget(*left, n)


__all__ = ["CheckpointKeeper", "Whole"]
