"""The migration saga: place, move (drain or failover), resume; rollback when the new
copy does not come up. Every step is recorded in Redis before and after it runs, and
every step is idempotent, so a migrator restarted at any moment resumes the migrations
it finds active (``resume_all``) and completes or rolls them back.

The master owns the task records and executes each move step (``names.master_move``,
fenced by the generation the saga started from); the scheduler chooses the target
when the request names none (the other tasks pinned where they run, the source and
the devices that cannot reach the task's channels avoided; placed on the task's
neighbourhood alone, so a move costs the same in a dataflow of 10 tasks or 10,000). Migrations of one
dataflow run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from echo_shared.errors import BusError, EchoError
from echo_shared.events import EventKind, EventLog
from echo_shared.leases import Fenced
from echo_shared.messages import (
    MigrateReply,
    MigrateRequest,
    Migration,
    MoveTaskReply,
    MoveTaskRequest,
    PlaceReply,
    PlaceRequest,
    TaskListReply,
    TaskListRequest,
    TaskLocation,
)
from echo_shared.models import DeviceRecord, DeviceStatus, TaskState
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.outage import Backoff, Outage, dependency_of
from echo_shared.registry_client import list_devices
from echo_shared.telemetry import current_trace_id, tracer

from .metrics import MigratorMetrics, downtime
from .sagas import SagaStore, begin, end, new_id, step
from .settings import MigratorSettings

log = logging.getLogger(__name__)

MOVING = {TaskState.running}
FAILING_OVER = {TaskState.running, TaskState.deploying, TaskState.pending, TaskState.failed}


class StepFailed(EchoError):
    """A step of a migration could not be done (the saga records why)."""


class StepUnanswered(StepFailed):
    """A step could not be done for now: a service did not answer (it may be restarting, or
    its connection dropped with the answer) or its own dependency is down. Every step is
    idempotent: the saga asks again, with back-off, for ``saga_retry_for`` seconds."""


class Migrations:
    def __init__(self, bus: NatsBus, names: Names, store: SagaStore, settings: MigratorSettings) -> None:
        self.bus = bus
        self.names = names
        self.store = store
        self.settings = settings
        self.tracer = tracer("echo.migrator")
        self._running: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.metrics = MigratorMetrics()
        self.events: EventLog | None = None  # the platform's event log (set by the app)

    # ------------------------------------------------------------------ views

    async def tasks(self, dataflow: str | None = None, device: str | None = None) -> TaskListReply:
        try:
            return await self.bus.request(
                self.names.master_tasks,
                TaskListRequest(dataflow=dataflow, device=device),
                TaskListReply,
                timeout=self.settings.request_timeout,
            )
        except BusError as e:
            raise StepUnanswered(f"the master did not answer: {e}") from e

    async def devices(self) -> dict[str, DeviceRecord]:
        try:
            devices = await list_devices(self.bus, self.names, timeout=self.settings.request_timeout)
        except BusError as e:
            raise StepUnanswered(f"the registry did not answer: {e}") from e
        return {d.id: d for d in devices}

    def busy(self, dataflow: str, task: str) -> str | None:
        """The id of the migration of this task still running in this process, if any."""
        for mid, t in self._running.items():
            if not t.done() and t.get_name() == f"{dataflow}/{task}":
                return mid
        return None

    # ------------------------------------------------------------------ starting

    async def start(self, req: MigrateRequest, *, failover: bool = False) -> MigrateReply:
        """Check the request, record the saga, run it in the background; 202 with its id."""
        try:
            listing = await self.tasks(dataflow=req.dataflow)
        except StepFailed as e:
            return MigrateReply(ok=False, status=503, reason=str(e))
        loc = next((t for t in listing.tasks if t.dataflow == req.dataflow and t.task == req.task), None)
        if loc is None:
            if not any(t.dataflow == req.dataflow for t in listing.tasks):
                return MigrateReply(ok=False, status=409, reason=f"dataflow {req.dataflow} is not running")
            return MigrateReply(ok=False, status=404, reason=f"task {req.task!r} of {req.dataflow} not found")
        allowed = FAILING_OVER if failover else MOVING
        if loc.state not in allowed or loc.device is None:
            return MigrateReply(
                ok=False,
                status=409,
                reason=f"task {req.task} is {loc.state.value}: only a running task migrates",
            )
        other = self.busy(req.dataflow, req.task)
        if other:
            return MigrateReply(
                ok=False, status=409, reason=f"task {req.task} is already migrating ({other})"
            )
        if req.device is not None:
            try:
                devices = await self.devices()
            except StepFailed as e:
                return MigrateReply(ok=False, status=503, reason=str(e))
            problem = target_problem(req.device, loc, devices)
            if problem:
                return MigrateReply(ok=False, status=422 if "unknown" in problem else 409, reason=problem)
        m = Migration(
            id=new_id(),
            dataflow=req.dataflow,
            task=req.task,
            origin=req.origin,
            reason=req.reason,
            requested_device=req.device,
            source=loc.device,
            target=req.device,
            generation_from=loc.generation,
        )
        for name in ("place", "restore" if failover else "drain", "resume"):
            step(m, name)
        try:
            await self.store.create(m)
        except Fenced as e:
            return MigrateReply(ok=False, status=503, reason=f"this migrator replica stepped down: {e}")
        self.spawn(m)
        log.info("migration %s: %s/%s from %s (%s)", m.id, m.dataflow, m.task, m.source, m.reason or m.origin)
        return MigrateReply(ok=True, migration=m.id)

    def spawn(self, m: Migration) -> None:
        task = asyncio.create_task(self.run(m), name=f"{m.dataflow}/{m.task}")
        self._running[m.id] = task
        task.add_done_callback(lambda _t: self._running.pop(m.id, None))

    async def resume_all(self) -> int:
        """Pick up the migrations a previous migrator left active (after a crash)."""
        active = await self.store.active()
        for m in active:
            log.info("resuming migration %s of %s/%s (%s)", m.id, m.dataflow, m.task, m.state)
            self.spawn(m)
        return len(active)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------------ the saga

    async def run(self, m: Migration) -> None:
        lock = self._locks.setdefault(m.dataflow, asyncio.Lock())
        async with lock:
            with self.tracer.start_as_current_span(f"migrate {m.task} ({m.id})") as span:
                span.set_attribute("echo.dataflow", m.dataflow)
                span.set_attribute("echo.migration", m.id)
                if m.trace_id is None:
                    m.trace_id = current_trace_id()
                try:
                    await self._until_settled(m)
                    if m.state in ("completed", "failed", "rolled_back"):
                        self.metrics.ended(m)
                        await self._persist(m, self._record)
                except Fenced:
                    # another replica leads now and resumes this saga from what was recorded
                    log.warning("migration %s: left to the new leader (this replica was fenced)", m.id)

    async def _until_settled(self, m: Migration) -> None:
        """Run the saga until it ends: a step that got no answer is asked again (with
        back-off) for ``saga_retry_for`` seconds; Redis or NATS out of reach is waited for,
        however long (without Redis nothing can be recorded, not even a failure)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.saga_retry_for
        outage = Outage(f"migration {m.id}", log)
        backoff = Backoff(0.2, 5.0)
        while True:
            failure: str | None = None
            try:
                await self._run(m)
                outage.ok()
                return
            except StepUnanswered as e:
                if loop.time() >= deadline:
                    failure = str(e)
                else:
                    outage.failed(e)
            except StepFailed as e:
                failure = str(e)
            except (asyncio.CancelledError, Fenced):
                raise  # a clean stop or a new leader: the saga stays active, resumed there
            except Exception as e:
                if dependency_of(e) is None:
                    log.exception("migration %s crashed", m.id)
                    failure = f"{type(e).__name__}: {e}"
                else:
                    outage.failed(e)
            if failure is not None:
                await self._persist(m, functools.partial(self._fail, why=failure))
                return
            await asyncio.sleep(backoff.next())

    async def _persist(self, m: Migration, write: Callable[[Migration], Awaitable[None]]) -> None:
        """A write that ends a saga (its failure, its event): retried while Redis or NATS is
        out of reach, so a migration is never left looking under way."""
        outage = Outage(f"recording migration {m.id}", log)
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await write(m)
                outage.ok()
                return
            except Exception as e:
                if dependency_of(e) is None:
                    raise
                outage.failed(e)
            await asyncio.sleep(backoff.next())

    async def _run(self, m: Migration) -> None:
        if m.state == "pending":
            m.state = "running"
            await self.store.save(m)
        failover = any(s.name == "restore" for s in m.steps)
        move_step = "restore" if failover else "drain"
        if step(m, "place").state != "done":
            with self._step_span(m, "place"):
                await self._place(m)
        if step(m, move_step).state != "done":
            with self._step_span(m, move_step):
                await self._move(m, move_step, "failover" if failover else "drain")
        if step(m, "resume").state != "done":
            with self._step_span(m, "resume"):
                resumed = await self._resume(m)
            if not resumed:
                return  # rolled back
        m.state = "completed"
        await self.store.save(m)
        log.info(
            "migration %s done: %s/%s %s -> %s (%s)",
            m.id,
            m.dataflow,
            m.task,
            m.source,
            m.target,
            ", ".join(f"{s.name} {s.ms:.0f} ms" for s in m.steps if s.ms is not None),
        )

    def _step_span(self, m: Migration, name: str) -> Any:
        """A saga step as a span of the migration's trace (the master's move and the agents'
        drain and restore happen inside it: their spans are its children)."""
        return self.tracer.start_as_current_span(
            f"migration step {name}", attributes={"echo.migration": m.id, "echo.task": m.task}
        )

    async def _place(self, m: Migration) -> None:
        begin(m, "place")
        await self.store.save(m)
        if m.target is not None:
            end(m, "place", detail=f"{m.target}: requested")
            await self.store.save(m)
            return
        listing = await self.tasks(dataflow=m.dataflow)
        spec = listing.specs.get(m.dataflow)
        loc = next((t for t in listing.tasks if t.task == m.task), None)
        if spec is None or loc is None:
            raise StepFailed(f"dataflow {m.dataflow} is not running any more")
        devices = await self.devices()
        spec_ids = {t.id for t in spec.tasks}
        if m.task not in spec_ids:
            raise StepFailed(f"{m.task} is a relay: relays move when the dataflow is rebalanced")
        avoid = sorted({m.source or "", *unreachable_for(loc, devices)} - {""})
        pinned = {
            t.task: t.device
            for t in listing.tasks
            if t.task != m.task
            and t.device
            and t.task in spec_ids
            and t.device in devices
            and devices[t.device].status is DeviceStatus.online
        }
        rates = {t.task: t.rate_out for t in listing.tasks if t.rate_out > 0 and t.task in spec_ids}
        try:
            reply = await self.bus.request(
                self.names.scheduler_place,
                PlaceRequest(
                    dataflow=m.dataflow,
                    spec=spec,
                    pinned=pinned,
                    avoid={m.task: avoid},
                    rates=rates,
                    neighbourhood=True,
                ),
                PlaceReply,
                timeout=self.settings.request_timeout,
            )
        except BusError as e:
            raise StepUnanswered(f"the scheduler did not answer for {m.task}: {e}") from e
        except EchoError as e:
            raise StepFailed(f"the scheduler could not place {m.task}: {e}") from e
        if not reply.ok or reply.placement is None:
            raise StepFailed(f"no device can take {m.task}: {reply.reason}")
        tp = next(t for t in reply.placement.tasks if t.task == m.task)
        m.target = tp.device
        end(m, "place", detail=tp.reason)
        await self.store.save(m)

    async def _move(self, m: Migration, name: str, mode: Literal["drain", "failover"]) -> None:
        assert m.target is not None
        begin(m, name)
        await self.store.save(m)
        reply = await self._ask_move(m, m.target, m.generation_from, mode)
        if not reply.ok:
            raise (StepUnanswered if reply.status == 503 else StepFailed)(f"{name} failed: {reply.reason}")
        m.generation_to = reply.generation
        detail = f"generation {reply.generation}; restored from {reply.restored_from or 'its snapshot'}"
        if reply.drain_ms:
            detail += f"; drained in {reply.drain_ms:.0f} ms"
        end(m, name, detail=detail)
        await self.store.save(m)

    async def _ask_move(
        self, m: Migration, target: str, expected: int, mode: Literal["drain", "failover", "rollback"]
    ) -> MoveTaskReply:
        req = MoveTaskRequest(
            dataflow=m.dataflow,
            task=m.task,
            target=target,
            expected_generation=expected,
            migration=m.id,
            mode=mode,
            reason=m.reason or m.origin,
        )
        try:
            return await self.bus.request(
                self.names.master_move, req, MoveTaskReply, timeout=self.settings.move_timeout
            )
        except BusError as e:
            raise StepUnanswered(f"the master did not answer the {mode} of {m.task}: {e}") from e

    async def _resume(self, m: Migration) -> bool:
        """Wait for the new copy to run; False when it did not and the move was rolled back."""
        begin(m, "resume")
        await self.store.save(m)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.resume_timeout
        while True:
            listing = await self.tasks(dataflow=m.dataflow)
            loc = next((t for t in listing.tasks if t.task == m.task), None)
            if loc is None:
                raise StepFailed(f"dataflow {m.dataflow} stopped while {m.task} moved")
            if loc.generation > m.generation_to:
                raise StepFailed(f"{m.task} moved again (generation {loc.generation}) before it resumed")
            if loc.state in (TaskState.running, TaskState.finished):
                end(m, "resume", detail=f"{loc.state.value} on {loc.device}")
                await self.store.save(m)
                return True
            if loc.state is TaskState.failed or loop.time() >= deadline:
                why = (
                    "failed"
                    if loc.state is TaskState.failed
                    else f"not running after {self.settings.resume_timeout:g}s"
                )
                end(m, "resume", "failed", detail=f"{m.task} {why} on {m.target}")
                await self.store.save(m)
                await self._rollback(m, why)
                return False
            await asyncio.sleep(self.settings.poll_interval)  # the master's view: polled

    async def _rollback(self, m: Migration, why: str) -> None:
        """The new copy did not come up: back to the source with the same snapshot."""
        devices = await self.devices()
        source = devices.get(m.source or "")
        if source is None or source.status is not DeviceStatus.online:
            raise StepFailed(f"{m.task} {why} on {m.target}, and its source {m.source} is not online")
        begin(m, "rollback")
        await self.store.save(m)
        reply = await self._ask_move(m, source.id, m.generation_to, "rollback")
        if not reply.ok:
            failed = StepUnanswered if reply.status == 503 else StepFailed
            raise failed(f"{m.task} {why} on {m.target}; rollback failed: {reply.reason}")
        end(m, "rollback", detail=f"back on {source.id}, generation {reply.generation}")
        m.state, m.error = "rolled_back", f"{m.task} {why} on {m.target}"
        await self.store.save(m)
        log.warning("migration %s rolled back: %s", m.id, m.error)

    async def _record(self, m: Migration) -> None:
        if self.events is None:
            return
        seconds = downtime(m)
        if m.state == "completed":
            took = f", down {seconds * 1000:.0f} ms" if seconds is not None else ""
            kind = EventKind.migrated
            message = f"{m.task} moved from {m.source} to {m.target} ({m.origin}{took})"
        else:
            kind = EventKind.migration_failed
            message = f"{m.task} did not move from {m.source} ({m.state}): {m.error}"
        figures: dict[str, Any] = {"from": m.source, "to": m.target, "downtime_s": seconds}
        await self.events.record(
            kind,
            message,
            dataflow=m.dataflow,
            task=m.task,
            device=m.target if m.state == "completed" else m.source,
            migration=m.id,
            origin=m.origin,
            **figures,
        )

    async def _fail(self, m: Migration, why: str) -> None:
        for s in m.steps:
            if s.state == "running":
                end(m, s.name, "failed", detail=why)
        if m.state not in ("rolled_back",):
            m.state, m.error = "failed", why
        await self.store.save(m)
        log.warning("migration %s of %s/%s: %s", m.id, m.dataflow, m.task, m.error)


def unreachable_for(loc: TaskLocation, devices: dict[str, DeviceRecord]) -> list[str]:
    """Devices that cannot reach a broker the task's channels use (they cannot take it)."""
    need = set(loc.brokers)
    return sorted(d.id for d in devices.values() if not need <= set(d.connectivity.brokers))


def target_problem(device: str, loc: TaskLocation, devices: dict[str, DeviceRecord]) -> str:
    d = devices.get(device)
    if d is None:
        return f"unknown device {device!r}"
    if d.status is not DeviceStatus.online:
        return f"device {device} is {d.status.value}"
    if device == loc.device:
        return f"task {loc.task} already runs on {device}"
    missing = sorted(set(loc.brokers) - set(d.connectivity.brokers))
    if missing:
        return f"device {device} does not reach {', '.join(missing)}, which the channels of {loc.task} use"
    return ""


__all__ = ["Migrations", "StepFailed", "target_problem", "unreachable_for"]
