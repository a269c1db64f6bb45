"""Moving tasks: the master's side of the migrator's sagas (it owns the task records).

The migrator asks (NATS, ``names.master_move``) for one step at a time; each is
idempotent, fenced by the generation the migrator last saw:

- ``drain``: the running copy stops taking input, finishes what it holds and snapshots
  (``StopTask(final=False)``); its snapshot and the target are recorded with the next
  generation, and the reconcile loop deploys the new copy, which restores the snapshot
  and resumes from the task's durable input position (its channel sessions belong to
  the task, not the device). A large state of an operator that tracks its changes
  (catalogue ``deltas``) is pre-copied: its latest kept checkpoint's state is staged on
  the target first (``StageState``) while the task runs, and the drain sends only the
  changes since it (``echo_shared.statedelta``).
- ``failover``: the device is lost; the new copy restores the task's latest periodic
  checkpoint (or, when the current copy never took one, the snapshot it started from)
  and its producers replay what came after it. The copy left on the lost device is
  remembered in ``TaskRecord.fenced`` and stopped if that device ever returns.
- ``rollback``: the target did not come up; the task goes back with the same snapshot.

Periodic checkpoints arriving from the agents are kept by ``keeping.CheckpointKeeper``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from echo_shared import statedelta
from echo_shared.errors import ConflictError, EchoError, NotFoundError, RetryableError
from echo_shared.messages import (
    SPLICE,
    MoveTaskReply,
    MoveTaskRequest,
    StageState,
    TaskCheckpoint,
    TaskListReply,
    TaskListRequest,
    TaskLocation,
    TaskSnapshot,
    spliced,
)
from echo_shared.models import DataflowSpec, DataflowState, DesiredState, TaskRecord, TaskState
from echo_shared.operators import lookup
from echo_shared.telemetry import inject

from .commands import deploy_command, stop_command
from .keeping import CheckpointKeeper
from .reconciling import DRAIN_SECONDS, Reconciler
from .snapshots import REF, SnapshotStore, as_json, is_ref, object_name, objects_of
from .store import ACTIVE_STATES, Dataflow, DataflowStore

log = logging.getLogger(__name__)

MOVABLE = {TaskState.running, TaskState.deploying, TaskState.pending}
DRAINABLE = {TaskState.running, TaskState.deploying, TaskState.failed}
STAGE_TIMEOUT = 60.0  # seconds a target may take to take in a staged state (100 MB: a few)
STAGE_HOLD = 100.0  # seconds the master counts on the target holding it (the agent: 120)


@dataclass(frozen=True)
class Staged:
    """A checkpoint's state staged on a move's target."""

    taken_at: float  # the checkpoint's, which names it to the agent
    name: str  # its object
    size: int  # its JSON bytes


class TaskMover:
    def __init__(
        self, store: DataflowStore, reconciler: Reconciler, snapshots: SnapshotStore | None = None
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.snapshots = snapshots
        self._background: set[asyncio.Task[None]] = set()
        # moves under way, by task: a migrator that asks again (its answer was lost with a
        # connection) joins the one in flight instead of draining the task a second time
        self._moving: dict[tuple[str, str], tuple[MoveTaskRequest, asyncio.Future[MoveTaskReply]]] = {}
        # the checkpoints kept, and their objects (a staged base is pinned while it moves)
        self.keeper = CheckpointKeeper(store, lambda: reconciler.link, snapshots)

    # ------------------------------------------------------------------ NATS handlers

    async def move(self, req: MoveTaskRequest) -> MoveTaskReply:
        key = (req.dataflow, req.task)
        running = self._moving.get(key)
        if running is not None:
            first, fut = running
            if first.migration == req.migration and first.mode == req.mode and first.target == req.target:
                return await asyncio.shield(fut)  # the same step asked again: its one answer
            return MoveTaskReply(
                ok=False, status=409, reason=f"task {req.task} is moving already ({first.migration})"
            )
        fut = asyncio.ensure_future(self._answer(req))
        self._moving[key] = (req, fut)
        fut.add_done_callback(lambda _: self._moving.pop(key, None))
        return await asyncio.shield(fut)  # a dropped request does not cancel a move half done

    async def _answer(self, req: MoveTaskRequest) -> MoveTaskReply:
        if not self.reconciler.leading():  # stepped down since it was asked: the saga asks again
            return MoveTaskReply(ok=False, status=503, reason="this master replica no longer leads")
        try:
            return await self._move(req)
        except NotFoundError as e:
            return MoveTaskReply(ok=False, status=404, reason=str(e))
        except ConflictError as e:
            return MoveTaskReply(ok=False, status=409, reason=str(e))
        except EchoError as e:
            return MoveTaskReply(ok=False, status=503, reason=str(e))

    async def tasks(self, req: TaskListRequest) -> TaskListReply:
        ids = [req.dataflow] if req.dataflow else await self.store.active_ids()
        out: list[TaskLocation] = []
        specs: dict[str, DataflowSpec] = {}
        for df in await self.store.all(ids):
            if df.desired is not DesiredState.running:
                continue
            if req.dataflow:
                specs[df.id] = df.spec
            brokers: dict[str, set[str]] = {}
            for c in df.placement.channels if df.placement else []:
                for t in (c.from_task, c.to_task):
                    brokers.setdefault(t, set()).add(c.transport)
            for rec in df.tasks.values():
                if req.device and rec.device != req.device:
                    continue
                info = lookup(rec.operator)
                out.append(
                    TaskLocation(
                        dataflow=df.id,
                        task=rec.id,
                        operator=rec.operator,
                        device=rec.device,
                        state=rec.state,
                        generation=rec.generation,
                        stateful=bool(info and info.stateful),
                        rate_out=rec.rate_out,
                        updated_at=rec.updated_at,
                        brokers=sorted(brokers.get(rec.id, set())),
                        lag=input_lag(df, rec),
                    )
                )
        return TaskListReply(tasks=out, specs=specs)

    def _tell_consumers(self, df_id: str, task: str) -> None:
        """The consumers of a moved task accept its new generation once told (in the background:
        the move does not wait; until then its records wait at the consumers, unacknowledged)."""
        t = asyncio.create_task(self._assign_generation(df_id, task))
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def on_checkpoint(self, ckpt: TaskCheckpoint) -> None:
        await self.keeper.on_checkpoint(ckpt)

    async def _assign_generation(self, df_id: str, task: str) -> None:
        df = await self.store.get(df_id)
        if df.placement is None:
            return
        generations = {t: r.generation for t, r in df.tasks.items()}
        link = self.reconciler.link
        timeout = self.reconciler.settings.command_timeout

        async def tell(rec: TaskRecord) -> None:
            device = rec.device
            assert device and df.placement is not None
            try:
                if rec.restore is not None and self.snapshots is not None:  # as a deploy sends it
                    restore = await self.snapshots.resolve(rec.restore, device)
                    rec = rec.model_copy(update={"restore": restore})
                cmd = deploy_command(df.id, df.effective, df.placement, rec, generations)
                await link.send(device, cmd, timeout)
            except Exception as e:  # it learns the generation when it is deployed again
                log.info("could not tell %s/%s about %s's new copy: %s", df.id, rec.id, task, e)

        consumers = [df.tasks[d] for d in df.effective.outputs_of(task) if d in df.tasks]
        await asyncio.gather(
            *(tell(c) for c in consumers if c.device and c.state in (TaskState.running, TaskState.deploying))
        )

    # ------------------------------------------------------------------ the steps

    async def _move(self, req: MoveTaskRequest) -> MoveTaskReply:
        df = await self.store.get(req.dataflow)
        rec = df.tasks.get(req.task)
        if rec is None:
            raise NotFoundError("task", f"{req.task} of dataflow {req.dataflow}")
        if rec.generation == req.expected_generation + 1 and rec.device == req.target:
            return MoveTaskReply(ok=True, source=None, generation=rec.generation, reason="already moved")
        if rec.generation != req.expected_generation:
            raise ConflictError(
                f"task {req.task} is at generation {rec.generation}, not {req.expected_generation}: "
                "another move came first"
            )
        if df.desired is not DesiredState.running or df.state not in ACTIVE_STATES:
            raise ConflictError(f"dataflow {df.id} is {df.state.value}: only a running dataflow can move")
        if rec.device == req.target and req.mode != "rollback":
            raise ConflictError(f"task {req.task} already runs on {req.target}")
        if req.mode == "drain":
            return await self._drain(df, rec, req)
        if req.mode == "failover":
            return await self._failover(df, rec, req)
        return await self._relocate(df, rec, req, rec.restore, "rollback", "the same snapshot")

    async def _drain(self, df: Dataflow, rec: TaskRecord, req: MoveTaskRequest) -> MoveTaskReply:
        if rec.device is None or rec.state not in DRAINABLE:
            # between two copies (a master restarted mid-move redeploys it): ask again shortly
            raise RetryableError(f"task {rec.id} is {rec.state.value}: it can drain once it runs")
        staged = await self._stage(df, rec, req)
        draining = (df.id, rec.id)
        self.reconciler.moving.add(draining)  # its copy stops now: not to be deployed again
        try:
            t0 = time.monotonic()
            ack = await self.reconciler.link.send(
                rec.device,
                stop_command(df.id, rec, final=False, delta_from=staged.taken_at if staged else None),
                self.reconciler.settings.command_timeout + DRAIN_SECONDS,
            )
            drain_ms = (time.monotonic() - t0) * 1000
            if not ack.ok:
                raise ConflictError(
                    f"task {rec.id} on {rec.device} could not drain: {ack.reason or ack.state}"
                )
            if ack.snapshot is None:
                # the copy had stopped already: a drain that a master killed mid-move sent, whose
                # snapshot died with it. The copy is stopped for good (its device keeps the
                # generation's tombstone): move it as a failover does, from its checkpoint
                return await self._failover(df, rec, req)
            snapshot = as_json(ack.snapshot)
            restored_from = "the drained copy's snapshot"
            state = snapshot["state"]
            if statedelta.is_changes(state):
                if staged is None or state[statedelta.SINCE] != staged.taken_at:
                    # not from what the target holds (never asked so): of no use; the copy
                    # stopped, so it moves as a failover does, from its checkpoint
                    log.warning("%s/%s drained a delta from a state its target does not hold", df.id, rec.id)
                    return await self._failover(df, rec, req)
                snapshot["state"] = statedelta.staged(staged.name, staged.size, state[statedelta.DELTA])
                restored_from = f"its checkpoint staged on {req.target} and the drained copy's changes since"
            if self.snapshots is not None:
                name = object_name(df.id, rec.id, rec.generation, "drain", ack.snapshot.taken_at)
                snapshot = await self.snapshots.offload(snapshot, name, keep=True)
            reply = await self._relocate(df, rec, req, snapshot, "drain", restored_from)
            reply.drain_ms = round(drain_ms, 3)
            return reply
        finally:
            self.reconciler.moving.discard(draining)
            if staged is not None:
                await self.keeper.unpin(staged.name)

    async def _stage(self, df: Dataflow, rec: TaskRecord, req: MoveTaskRequest) -> Staged | None:
        """Pre-copy: the task's latest kept checkpoint's state, sent to the target while the
        task still runs (only for a large state whose operator says what changed since).
        None when it does not apply or fails: the drain then sends the whole state."""
        info = lookup(rec.operator)
        if self.snapshots is None or info is None or not info.deltas:
            return None
        if df.effective.task(rec.id).resources.worker:
            return None  # an operator in a worker process does not track its changes
        ckpt = await self.store.checkpoint(df.id, rec.id)
        if ckpt is None or ckpt.generation != rec.generation or not is_ref(ckpt.snapshot.state):
            return None  # none of this copy's, or small: it goes whole
        ref: dict[str, Any] = ckpt.snapshot.state
        staged = Staged(taken_at=ckpt.snapshot.taken_at, name=str(ref[REF]), size=int(ref.get("bytes", 0)))
        self.keeper.pin(staged.name)  # and its base
        t0 = time.monotonic()
        try:
            # as stored: the master neither parses nor serialises the bulk (100 MB: seconds of
            # its loop, while the task's checkpoints wait to be kept and its flow with them)
            raw, delta = await self.snapshots.raw(staged.name)
            cmd = StageState(
                cmd_id=uuid.uuid4().hex,
                dataflow=df.id,
                task=rec.id,
                generation=rec.generation + 1,
                name=staged.name,
                delta=delta,
            )
            payload = spliced({**cmd.model_dump(mode="json"), "state": SPLICE}, raw)
            ack = await self.reconciler.link.stage(req.target, cmd, STAGE_TIMEOUT, payload=payload)
            if not ack.ok:
                raise ConflictError(ack.reason or ack.state.value)
        except asyncio.CancelledError:
            await self.keeper.unpin(staged.name)
            raise
        except Exception as e:
            await self.keeper.unpin(staged.name)
            log.info(
                "%s/%s: state not staged on %s (%s): the drain sends it whole", df.id, rec.id, req.target, e
            )
            return None
        self.snapshots.staged_on(req.target, staged.name, STAGE_HOLD)
        log.info(
            "%s/%s: state %s (its object %d bytes) staged on %s in %.2fs",
            df.id,
            rec.id,
            staged.name,
            staged.size,
            req.target,
            time.monotonic() - t0,
        )
        return staged

    async def _failover(self, df: Dataflow, rec: TaskRecord, req: MoveTaskRequest) -> MoveTaskReply:
        ckpt = await self.store.checkpoint(df.id, rec.id)
        if ckpt is not None and ckpt.generation == rec.generation:
            restore: dict[str, Any] | None = ckpt.snapshot.model_dump(mode="json")
            source = f"checkpoint of {time.time() - ckpt.snapshot.taken_at:.1f}s ago"
        elif rec.restore is not None:
            restore, source = rec.restore, "the snapshot its copy started from (no checkpoint yet)"
        else:
            restore, source = None, "nothing (no checkpoint: it starts afresh)"
        return await self._relocate(df, rec, req, restore, "failover", source)

    async def _relocate(
        self,
        df: Dataflow,
        rec: TaskRecord,
        req: MoveTaskRequest,
        restore: dict[str, Any] | None,
        mode: str,
        restored_from: str,
    ) -> MoveTaskReply:
        fenced = dict(rec.fenced)
        if mode == "failover" and rec.device:
            fenced[rec.device] = rec.generation  # stop it if that device comes back
        if restore is not None:
            TaskSnapshot.model_validate(restore)  # never record what a deploy could not use
        with self.reconciler.tracer.start_as_current_span(f"{mode} {rec.id} {rec.device} -> {req.target}"):
            moved = await self.store.patch_task(
                df.id,
                rec.id,
                {
                    "device": req.target,
                    "generation": rec.generation + 1,
                    "state": TaskState.pending,
                    "reason": "",
                    "restore": restore,
                    "fenced": fenced,
                    "placement_reason": f"{req.target}: {mode} ({req.reason or req.migration})",
                    "last_command_at": 0.0,
                    "attempts": 0,
                    "records_in": 0,
                    "records_out": 0,
                    # the new copy's deployment (its restore) is part of this move's trace
                    "traceparent": inject().get("traceparent", ""),
                },
                generation=rec.generation,
            )
            if moved is None:
                raise ConflictError(f"task {rec.id} changed while moving: another move came first")
            for name in sorted(objects_of(rec.restore)):  # what the copy before restored from
                await self.keeper.forget(df.id, rec.id, name)  # (kept if the new restore needs it)
            hooks = self.reconciler.link.hooks
            if hooks is not None and rec.device and rec.device != req.target:
                # the copy left behind loses its channels (a drained one already did)
                await hooks.withdraw(rec.device, df.id, rec.id, rec.generation)
            await self.store.move_in_placement(df.id, rec.id, req.target, moved.placement_reason)
            await self.reconciler.set_state(df, DataflowState.deploying, f"moving {rec.id} to {req.target}")
            self.reconciler.kick(df.id)
            self._tell_consumers(df.id, rec.id)
        log.info(
            "%s %s/%s: %s -> %s, generation %d, restored from %s",
            mode,
            df.id,
            rec.id,
            rec.device,
            req.target,
            rec.generation + 1,
            restored_from,
        )
        return MoveTaskReply(
            ok=True, source=rec.device, generation=rec.generation + 1, restored_from=restored_from
        )


def input_lag(df: Dataflow, rec: TaskRecord) -> int:
    """Records its producers emitted that the task has not taken yet (positions, not
    counters: they survive moves). 0 when it has no producer or nothing was reported."""
    lag = 0
    for producer in df.effective.inputs_of(rec.id):
        p = df.tasks.get(producer)
        if p is not None and p.out_seq:
            lag += max(0, p.out_seq - rec.hwm.get(producer, 0))
    return lag


__all__ = ["TaskMover", "input_lag"]
