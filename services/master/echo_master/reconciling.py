"""The reconcile loop: drive every dataflow's observed state towards its desired state.

Each pass reads the dataflow from Redis and takes the next idempotent step:

- ``pending``: ask the scheduler for a placement; record it (tasks get a device and a
  new generation) -> ``scheduled``; an impossible placement -> ``failed`` with the reason;
- ``scheduled`` / ``deploying`` / ``running``: deploy every task that is not running,
  tasks with inputs before sources, each command acked by its agent (timeout, retried on the
  next pass) -> ``running`` when all run, ``completed`` when all finished, ``failed`` when
  a task failed;
- desired ``stopped``: stop every placed task -> ``stopped``.

A pass holds no state of its own beyond Redis, so a master killed at any point and
started again continues where the last one stopped. One worker per dataflow runs at a
time; ``kick()`` schedules a pass at once (after a POST, an ack or a device event).

With replicas, only the leading one runs this loop (``app``); its writes are fenced by its
lease (``store``). Another replica's API asks the leader for a pass (``wake``: a NATS
message on ``master.kick``); the periodic sweep would find the change within
``reconcile_period`` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from echo_shared.errors import BusError, EchoError, RequestTimeout, SpecError
from echo_shared.events import EventKind, EventLog
from echo_shared.messages import (
    CommandAck,
    DeployTask,
    DeviceEvent,
    PlaceReply,
    PlaceRequest,
    Reservation,
    TaskStatus,
)
from echo_shared.models import DataflowState, DesiredState, DeviceStatus, TaskRecord, TaskState
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.outage import Outage, dependency_of
from echo_shared.telemetry import extract, tracer

from .agents_link import AgentLink
from .commands import add_reservation, deploy_command, deploy_levels, stop_command
from .metrics import MasterMetrics
from .settings import MasterSettings
from .snapshots import SnapshotStore
from .store import ACTIVE_STATES, Dataflow, DataflowStore, needs_work

log = logging.getLogger(__name__)

DONE = {TaskState.running, TaskState.finished}
SETTLED = DONE | {TaskState.failed}  # a deploy that has an outcome
STOP_ATTEMPTS = 3
DRAIN_SECONDS = 12.0  # what an agent may take to drain a task that moves
MAX_CONCURRENT_PASSES = 32
# a running dataflow whose every task has settled is swept this rarely (its changes arrive
# as kicks: reports, device events, moves); a pass reads every task record
QUIET_SWEEP = 5.0


PLACEMENTS_IN_EVENT = 50  # tasks a "scheduled" event names (each task's view has its own reason)
STATE_EVENTS = {
    DataflowState.failed: EventKind.dataflow_failed,
    DataflowState.completed: EventKind.completed,
    DataflowState.stopped: EventKind.stopped,
}


class Reconciler:
    def __init__(
        self, store: DataflowStore, link: AgentLink, bus: NatsBus, names: Names, settings: MasterSettings
    ) -> None:
        self.store = store
        self.link = link
        self.bus = bus
        self.outage = Outage("reconciler: a dependency", log)
        self.names = names
        self.settings = settings
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.tracer = tracer("echo.master")
        self.snapshots: SnapshotStore | None = None  # large operator state (object store)
        self.changed = asyncio.Condition()
        self.metrics: MasterMetrics | None = None
        self.events: EventLog | None = None
        self._task_states: dict[tuple[str, str], tuple[int, TaskState]] = {}  # last seen, for events
        self._dirty_since: dict[str, float] = {}  # when a dataflow first needed attention
        self._reported: dict[tuple[str, str], tuple[int, TaskState, str]] = {}  # last report's outcome
        self._quiet_until: dict[str, float] = {}  # settled running dataflows: next periodic pass
        self.leading: Callable[[], bool] = lambda: True  # replicas: whether this one runs the loop
        # tasks a move is draining (``moving``): their copy stops on purpose and the move
        # deploys the next one; deployed again meanwhile, the stopped copy would be sent its
        # whole restored state (100 MB: seconds of this loop and the device's) to refuse it
        self.moving: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ loop

    def kick(self, df_id: str) -> None:
        self._dirty.add(df_id)
        self._dirty_since.setdefault(df_id, time.monotonic())
        self._wake.set()

    async def wake(self, df_id: str) -> None:
        """A pass over ``df_id`` soon, by whichever replica leads (the API's changes)."""
        if self.leading():
            self.kick(df_id)
            return
        try:
            await self.bus.nc.publish(self.names.master_kick, df_id.encode())
        except Exception as e:  # the leader's sweep finds it anyway
            level = logging.DEBUG if dependency_of(e) is not None else logging.WARNING
            log.log(level, "cannot ask the leader for a pass over %s: %s", df_id, e)

    async def elected(self) -> None:
        """This replica now leads: what was recorded counts as seen (a task's state that the
        previous leader announced is not announced again when its report is replayed)."""
        self._task_states.clear()
        self._reported.clear()
        self._quiet_until.clear()
        for df in await self.store.all(await self.store.active_ids()):
            for rec in df.tasks.values():
                self._task_states[(df.id, rec.id)] = (rec.generation, rec.state)
            self.kick(df.id)

    async def run(self, stop: asyncio.Event) -> None:
        last_sweep = 0.0
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.reconcile_period):
                        await self._wake.wait()
                self._wake.clear()
                if stop.is_set():
                    break
                now = time.monotonic()
                if now - last_sweep >= self.settings.reconcile_period:
                    last_sweep = now
                    try:
                        ids = await self.store.active_ids()
                        self._dirty.update(i for i in ids if self._quiet_until.get(i, 0.0) <= now)
                        self.outage.ok()
                    except Exception as e:
                        if dependency_of(e) is None:
                            log.exception("cannot list dataflows")
                        else:
                            self.outage.failed(e)
                self._workers = {k: w for k, w in self._workers.items() if not w.done()}
                for df_id in list(self._dirty):
                    if len(self._workers) >= MAX_CONCURRENT_PASSES:
                        break  # the rest stay dirty for the next round
                    if df_id not in self._workers:
                        self._dirty.discard(df_id)
                        since = self._dirty_since.pop(df_id, None)
                        if since is not None and self.metrics is not None:
                            self.metrics.waited(time.monotonic() - since)
                        self._workers[df_id] = asyncio.create_task(
                            self._pass(df_id), name=f"reconcile-{df_id}"
                        )
        finally:
            for w in self._workers.values():
                w.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _pass(self, df_id: str) -> None:
        try:
            df = await self.store.get(df_id)
            if df.desired is DesiredState.stopped:
                if df.state is not DataflowState.stopped:
                    await self._stop(df)
            elif df.state in (
                DataflowState.pending,
                DataflowState.scheduled,
                DataflowState.deploying,
                DataflowState.running,
            ):
                with self.tracer.start_as_current_span(
                    "reconcile dataflow", context=extract({"traceparent": df.traceparent})
                ) as span:
                    span.set_attribute("echo.dataflow", df.id)
                    span.set_attribute("echo.state", df.state.value)
                    if df.state is DataflowState.pending:
                        await self._schedule(df)
                        df = await self.store.get(df_id)
                    if df.state is not DataflowState.failed and df.placement is not None:
                        await self._converge(df)
            df = await self.store.get(df_id)
            await self.store.set_active(df_id, needs_work(df.desired, df.state))
            settled = all(r.state in SETTLED for r in df.tasks.values())
            if df.desired is DesiredState.running and df.state is DataflowState.running and settled:
                self._quiet_until[df_id] = time.monotonic() + QUIET_SWEEP
            else:
                self._quiet_until.pop(df_id, None)
        except EchoError as e:
            if dependency_of(e) is None:
                log.info("dataflow %s: will retry: %s", df_id, e)
            else:
                self.outage.failed(e)  # the sweep lists it again (still active) once it is over
        except Exception as e:
            if dependency_of(e) is None:
                log.exception("reconcile pass for %s failed", df_id)
            else:
                self.outage.failed(e)
        finally:
            if self._dirty:
                self._wake.set()
            async with self.changed:
                self.changed.notify_all()

    async def set_state(self, df: Dataflow, state: DataflowState, reason: str = "") -> None:
        if df.state == state and df.reason == reason:
            return
        log.info("dataflow %s: %s -> %s %s", df.id, df.state.value, state.value, reason)
        extra: dict[str, str] = {}
        if state is DataflowState.running and not df.raw.get("first_running_at"):
            now = time.time()
            extra["first_running_at"] = repr(now)  # a redeploy later is not a submission
            if self.metrics is not None:
                self.metrics.deployed(now - df.created_at)
            took = now - df.created_at
            await self.event(EventKind.deployed, df.id, f"running, {took * 1000:.0f} ms after submission")
        elif state in STATE_EVENTS:
            await self.event(STATE_EVENTS[state], df.id, f"{state.value}{': ' + reason if reason else ''}")
        await self.store.set_state(df.id, state, reason, **extra)
        if extra:
            df.raw.update(extra)
        trace.get_current_span().add_event("state", {"state": state.value, "reason": reason})
        df.state, df.reason = state, reason
        async with self.changed:  # wake whoever waits for this dataflow (DELETE, ?wait=)
            self.changed.notify_all()

    # ------------------------------------------------------------------ placing

    async def reserved(self, exclude: str) -> dict[str, Reservation]:
        total: dict[str, Reservation] = {}
        for other in await self.store.all(await self.store.active_ids()):
            if other.id == exclude or other.state not in ACTIVE_STATES:
                continue
            for rec in other.tasks.values():
                if rec.device and rec.state not in (TaskState.finished, TaskState.stopped, TaskState.failed):
                    res = other.effective.task(rec.id).resources
                    add_reservation(total, rec.device, res.cpu, res.memory_mb)
        return total

    async def _schedule(self, df: Dataflow) -> None:
        req = PlaceRequest(
            dataflow=df.id, spec=df.spec, reserved=await self.reserved(df.id), rates=observed_rates(df)
        )
        try:
            reply = await self.bus.request(
                self.names.scheduler_place, req, PlaceReply, timeout=self.settings.scheduler_timeout
            )
        except SpecError as e:
            await self.set_state(df, DataflowState.failed, f"invalid spec: {e}")
            return
        if not reply.ok or reply.placement is None:
            await self.event(EventKind.unplaceable, df.id, f"cannot be placed: {reply.reason}")
            await self.set_state(df, DataflowState.failed, f"cannot be placed: {reply.reason}")
            return
        generations = {t: rec.generation + 1 for t, rec in df.tasks.items()}
        await self.store.set_placement(df.id, reply.placement, generations)
        placed = reply.placement.tasks
        summary = ", ".join(f"{p.task} on {p.device}" for p in placed[:PLACEMENTS_IN_EVENT])
        more = f" and {len(placed) - PLACEMENTS_IN_EVENT} more" if len(placed) > PLACEMENTS_IN_EVENT else ""
        await self.event(
            EventKind.scheduled,
            df.id,
            f"{len(placed)} task(s) placed ({reply.placement.strategy}): {summary}{more}",
            placement={
                p.task: {"device": p.device, "reason": p.reason} for p in placed[:PLACEMENTS_IN_EVENT]
            },
        )
        await self.set_state(df, DataflowState.scheduled)

    # ------------------------------------------------------------------ deploying

    async def _converge(self, df: Dataflow) -> None:
        """Deploy wave by wave; a failed task does not stop the later waves, so every task
        ends with a state and a reason of its own. Then sum up: failed, completed or running."""
        assert df.placement is not None
        if any(r.state not in SETTLED for r in df.tasks.values()) and df.state is not DataflowState.deploying:
            await self.set_state(df, DataflowState.deploying)
        for level in deploy_levels(df.effective):
            waiting = [df.tasks[t] for t in level if df.tasks[t].state not in SETTLED]
            if not waiting:
                continue
            now = time.time()
            due = [
                r
                for r in waiting
                if (df.id, r.id) not in self.moving
                and (
                    r.state is not TaskState.deploying
                    or now - r.last_command_at >= self.settings.command_timeout
                )
            ]
            now = time.time()
            await self.store.patch_tasks(
                df.id,
                [
                    (
                        r.id,
                        {"state": TaskState.deploying, "last_command_at": now, "attempts": r.attempts + 1},
                        r.generation,
                    )
                    for r in due
                ],
            )
            commands = [await self._command(df, r) for r in due]
            await self.link.prepare([(r.device, c) for r, c in zip(due, commands, strict=True) if r.device])
            results = await asyncio.gather(
                *(self._deploy(r, c) for r, c in zip(due, commands, strict=True)), return_exceptions=True
            )
            df = await self.store.get(df.id)
            still = [df.tasks[t] for t in level if df.tasks[t].state not in SETTLED]
            if still:
                problems = [str(e) for e in results if isinstance(e, BaseException)]
                reason = summed(problems) or f"waiting for {summed([r.id for r in still], sep=', ')}"
                await self.set_state(df, DataflowState.deploying, reason)
                return
        failed = [r for r in df.tasks.values() if r.state is TaskState.failed]
        if failed:
            r = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            await self.set_state(
                df, DataflowState.failed, f"task {r.id} failed on {r.device}: {r.reason}{more}"
            )
        elif all(r.state is TaskState.finished for r in df.tasks.values()):
            await self.set_state(df, DataflowState.completed)
        else:
            # a running task may say why it is not well (an output edge that stopped moving)
            unwell = [
                f"task {r.id}: {r.reason}"
                for r in df.tasks.values()
                if r.state is TaskState.running and r.reason
            ]
            await self.set_state(df, DataflowState.running, summed(unwell))

    async def _command(self, df: Dataflow, rec: TaskRecord) -> DeployTask:
        assert df.placement is not None
        if rec.restore is not None and self.snapshots is not None:
            rec = rec.model_copy(update={"restore": await self.snapshots.resolve(rec.restore, rec.device)})
        generations = {t: r.generation for t, r in df.tasks.items()}
        return deploy_command(df.id, df.effective, df.placement, rec, generations)

    async def _deploy(self, rec: TaskRecord, cmd: DeployTask) -> CommandAck:
        device = rec.device  # the caller marked it deploying
        assert device
        # a moved task's new copy: in the move's trace (the reconcile pass is the dataflow's)
        moved = extract({"traceparent": rec.traceparent}) if rec.traceparent else None
        with self.tracer.start_as_current_span(f"deploy {rec.id} to {device}", context=moved) as span:
            span.set_attribute("echo.device", device)
            span.set_attribute("echo.generation", rec.generation)
            ack = await self.link.send(device, cmd, self.settings.command_timeout)
            span.set_attribute("echo.state", ack.state.value)
            return ack

    # ------------------------------------------------------------------ stopping

    async def _stop(self, df: Dataflow) -> None:
        if df.state is not DataflowState.stopping:
            await self.set_state(df, DataflowState.stopping)
        placed = [r for r in df.tasks.values() if r.device and r.state is not TaskState.stopped]

        async def stop_one(rec: TaskRecord) -> None:
            assert rec.device
            await self.store.patch_task(
                df.id, rec.id, {"attempts": rec.attempts + 1}, generation=rec.generation
            )
            try:
                ack = await self.link.send(
                    rec.device, stop_command(df.id, rec), self.settings.command_timeout
                )
            except RequestTimeout:
                if rec.attempts + 1 >= STOP_ATTEMPTS:
                    await self.store.patch_task(
                        df.id,
                        rec.id,
                        {
                            "state": TaskState.stopped,
                            "reason": f"{rec.device} did not confirm; the stop waits in its command queue",
                        },
                        generation=rec.generation,
                    )
                raise
            if ack.ok or ack.state is TaskState.stopped:
                await self.store.patch_task(
                    df.id, rec.id, {"state": TaskState.stopped, "reason": ""}, generation=rec.generation
                )

        await asyncio.gather(*(stop_one(r) for r in placed), return_exceptions=True)
        df = await self.store.get(df.id)
        if all(r.state is TaskState.stopped or not r.device for r in df.tasks.values()):
            await self.set_state(df, DataflowState.stopped)

    # ------------------------------------------------------------------ reports

    async def on_update(self, update: TaskStatus | CommandAck) -> None:
        """Apply an agent's ack or status report (reports never move a task backwards)."""
        patch: dict[str, object] = {"state": update.state, "reason": update.reason}
        if isinstance(update, CommandAck):
            if not update.ok and update.state is not TaskState.failed:
                return  # a stale or refused command: the task's record is not about it
        else:
            patch["records_in"] = update.records_in
            patch["records_out"] = update.records_out
            patch["rate_out"] = update.rate_out
            if update.out_seq:
                patch["out_seq"] = update.out_seq
            if update.hwm:
                patch["hwm"] = update.hwm
            if update.channels:
                patch["channels"] = {k: v.model_dump() for k, v in update.channels.items()}
        rec = await self.store.patch_task(
            update.dataflow, update.task, patch, generation=update.generation, forward_only=True
        )
        if rec is not None:
            if update.state is TaskState.failed and self.metrics is not None:
                self.metrics.task_failed(update.dataflow, update.task, update.device)
            await self._task_event(update)
            # a periodic report that changes nothing the dataflow's state depends on needs
            # no pass (1,000 tasks report every few seconds; a pass reads them all)
            key, seen = (update.dataflow, update.task), (update.generation, rec.state, rec.reason)
            if isinstance(update, CommandAck) or self._reported.get(key) != seen:
                self._reported[key] = seen
                self.kick(update.dataflow)
            if rec.state in (TaskState.stopped, TaskState.finished):
                self._reported.pop(key, None)

    async def event(self, kind: EventKind, df_id: str, message: str, **kw: Any) -> None:
        if self.events is not None:
            await self.events.record(kind, message, dataflow=df_id, **kw)

    async def _task_event(self, update: TaskStatus | CommandAck) -> None:
        """A task's start, restart or failure (once per change of state, not per report)."""
        key = (update.dataflow, update.task)
        seen = self._task_states.get(key)
        if seen == (update.generation, update.state):
            return
        self._task_states[key] = (update.generation, update.state)
        where: dict[str, Any] = {
            "task": update.task,
            "device": update.device,
            "generation": update.generation,
        }
        if update.state is TaskState.running:
            restarted = update.generation > 1
            kind = EventKind.task_restarted if restarted else EventKind.task_started
            message = f"{update.task} running on {update.device}" + (
                f" (generation {update.generation})" if restarted else ""
            )
            await self.event(kind, update.dataflow, message, **where)
        elif update.state is TaskState.failed:
            message = f"{update.task} failed on {update.device}: {update.reason}"
            await self.event(EventKind.task_failed, update.dataflow, message, **where)
        if update.state in (TaskState.stopped, TaskState.finished):
            self._task_states.pop(key, None)

    async def on_device_event(self, event: DeviceEvent) -> None:
        """A device came back online.

        Its agent restarted: deploy again what should run on it (the agent resumes the tasks
        it kept on disk by itself; a deploy of the generation it runs finds it running). Cut
        off or restarted, its tasks kept running (edge autonomy), except those that failed
        over meanwhile: their stale copies are stopped (fenced), also after a restart, since
        an agent resumes what it kept on disk."""
        if event.status is not DeviceStatus.online:
            return
        for df in await self.store.all(await self.store.active_ids()):
            if df.desired is not DesiredState.running or df.state not in ACTIVE_STATES:
                continue
            touched = False
            for rec in df.tasks.values():
                if event.device in rec.fenced:
                    await self.fence(df.id, rec, event.device, rec.fenced[event.device])
                if (
                    event.restarted
                    and rec.device == event.device
                    and rec.state in (TaskState.running, TaskState.deploying)
                ):
                    await self.store.patch_task(
                        df.id,
                        rec.id,
                        {"state": TaskState.deploying, "last_command_at": 0.0},
                        generation=rec.generation,
                    )
                    touched = True
            if touched:
                self.kick(df.id)

    async def fence(self, df_id: str, rec: TaskRecord, device: str, generation: int) -> None:
        """Stop the stale copy (``generation``) of a task that failed over away from ``device``."""
        stale = rec.model_copy(update={"generation": generation})
        cmd = stop_command(df_id, stale)
        cmd.fence = True
        with self.tracer.start_as_current_span(f"fence {rec.id} gen {generation} on {device}"):
            try:
                ack = await self.link.send(device, cmd, self.settings.command_timeout)
            except RequestTimeout as e:
                log.warning(
                    "fencing %s/%s on %s: %s (retried when it reports again)", df_id, rec.id, device, e
                )
                return
        log.info(
            "fenced the stale copy of %s/%s (gen %d) on %s: %s", df_id, rec.id, generation, device, ack.state
        )
        await self.store.unfence(df_id, rec.id, device, generation)

    async def wait_for(self, df_id: str, states: set[DataflowState], timeout: float) -> Dataflow:
        """Wait until a dataflow reaches one of ``states`` (or the timeout); returns it. Each
        change wakes it to read the state alone; the dataflow is read whole once, at the end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await self.store.state_of(df_id)
            left = deadline - loop.time()
            if state in states or left <= 0:
                df = await self.store.get(df_id)
                if df.state in states or left <= 0:  # else it changed in between: wait on
                    return df
                continue
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.5)):
                        await self.changed.wait()


__all__ = ["BusError", "Reconciler"]


def summed(items: list[str], *, sep: str = "; ", first: int = 3) -> str:
    """The first few of many (a reason naming 200 tasks helps nobody)."""
    if len(items) <= first:
        return sep.join(items)
    return sep.join(items[:first]) + f" (and {len(items) - first} more)"


def observed_rates(df: Dataflow) -> dict[str, float]:
    """Records/s out per task as the agents measured them (placement prefers them to hints)."""
    ids = {t.id for t in df.spec.tasks}
    return {tid: rec.rate_out for tid, rec in df.tasks.items() if tid in ids and rec.rate_out > 0}
