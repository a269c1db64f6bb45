"""Adaptive rebalancing: tasks move off devices that stay overloaded.

Every ``rebalance_period`` the fleet's utilisation (the registry's device records: CPU
and memory from the heartbeats) and the input lag of each running task (records its
producers emitted that it has not taken; positions reported by the agents) are compared
with the thresholds. A device above one for ``overload_window`` seconds in a row gets
one task moved off it: the running task of a spec (not pinned by device or input stream,
not moved within the cool-down) with the highest observed output rate (for lag: the task
that lags most); the scheduler picks the target (the device avoided). Then the device
and the task cool down for ``overload_cooldown`` seconds, so nothing flaps. Every
decision, to move or not, is recorded with its reason (``SagaStore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from echo_shared.events import EventKind
from echo_shared.messages import MigrateRequest, RebalanceDecision, TaskLocation
from echo_shared.models import DataflowSpec, DeviceRecord, DeviceStatus, TaskState
from echo_shared.outage import Outage, dependency_of
from echo_shared.telemetry import current_trace_id, tracer

from .migrating import Migrations, StepFailed
from .sagas import SagaStore
from .settings import MigratorSettings

log = logging.getLogger(__name__)


def overload(d: DeviceRecord, s: MigratorSettings, lag: int = 0) -> tuple[str, float, float] | None:
    """(metric, value, threshold) of the first threshold the device is above, or None;
    ``lag``: the largest input lag of a task on it (records)."""
    if d.cpu_percent is not None and d.cpu_percent > s.overload_cpu_percent:
        return "cpu_percent", d.cpu_percent, s.overload_cpu_percent
    if d.memory_percent is not None and d.memory_percent > s.overload_memory_percent:
        return "memory_percent", d.memory_percent, s.overload_memory_percent
    if lag > s.overload_lag:
        return "input_lag", float(lag), float(s.overload_lag)
    return None


def movable(t: TaskLocation, spec: DataflowSpec | None) -> bool:
    if t.state is not TaskState.running or spec is None:
        return False
    task = next((x for x in spec.tasks if x.id == t.task), None)
    return task is not None and task.placement.device is None and task.placement.input_stream is None


class Rebalancer:
    def __init__(self, migrations: Migrations, store: SagaStore, settings: MigratorSettings) -> None:
        self.migrations = migrations
        self.store = store
        self.settings = settings
        self.hot_since: dict[str, float] = {}
        self.cool_until: dict[str, float] = {}  # device id or "dataflow/task"

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``rebalance_period`` until ``stop``; a tick that fails (a step refused,
        Redis or another service out of reach, a bug) never ends the loop."""
        outage = Outage("rebalancer: a dependency", log)
        while not stop.is_set():
            try:
                await self.tick(time.monotonic())
                outage.ok()
            except StepFailed as e:
                log.warning("rebalancer: %s", e)
            except Exception as e:
                if dependency_of(e) is None:
                    log.exception("rebalancer tick failed")
                else:
                    outage.failed(e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.rebalance_period):
                    await stop.wait()

    async def tick(self, now: float) -> list[RebalanceDecision]:
        out = []
        lags: dict[str, int] = {}
        for t in (await self.migrations.tasks()).tasks:
            if t.device and t.state is TaskState.running:
                lags[t.device] = max(lags.get(t.device, 0), t.lag)
        for d in sorted((await self.migrations.devices()).values(), key=lambda d: d.id):
            hot = overload(d, self.settings, lags.get(d.id, 0)) if d.status is DeviceStatus.online else None
            if hot is None:
                self.hot_since.pop(d.id, None)
                continue
            since = self.hot_since.setdefault(d.id, now)
            if now - since < self.settings.overload_window or now < self.cool_until.get(d.id, 0.0):
                continue
            out.append(await self.relieve(d, *hot, held=now - since, now=now))
        return out

    async def relieve(
        self, d: DeviceRecord, metric: str, value: float, threshold: float, held: float, now: float
    ) -> RebalanceDecision:
        """Decide about an overloaded device: one trace, the move it starts (if any) in it."""
        with tracer("echo.migrator").start_as_current_span(
            f"rebalance decision {d.id}", attributes={"echo.device": d.id, "echo.metric": metric}
        ) as span:
            decision = await self._relieve(d, metric, value, threshold, held, now)
            span.set_attribute("echo.action", decision.action)
            return decision

    async def _relieve(
        self, d: DeviceRecord, metric: str, value: float, threshold: float, held: float, now: float
    ) -> RebalanceDecision:
        why = f"{d.id}: {metric} {value:.0f} > {threshold:.0f} for {held:.0f}s"
        listing = await self.migrations.tasks(device=d.id)
        specs: dict[str, DataflowSpec | None] = {}
        candidates = []
        if metric == "input_lag":  # the task that lags first
            order = sorted(listing.tasks, key=lambda t: (-t.lag, t.dataflow, t.task))
        else:  # the busiest first
            order = sorted(listing.tasks, key=lambda t: (-t.rate_out, t.dataflow, t.task))
        for t in order:
            if now < self.cool_until.get(f"{t.dataflow}/{t.task}", 0.0):
                continue
            if t.dataflow not in specs:
                specs[t.dataflow] = (await self.migrations.tasks(dataflow=t.dataflow)).specs.get(t.dataflow)
            if movable(t, specs[t.dataflow]):
                candidates.append(t)
        decision = RebalanceDecision(
            ts=time.time(),
            device=d.id,
            metric=metric,
            value=value,
            threshold=threshold,
            action="none",
            reason=why,
            trace_id=current_trace_id(),
        )
        for t in candidates:
            reply = await self.migrations.start(
                MigrateRequest(dataflow=t.dataflow, task=t.task, origin="overload", reason=why)
            )
            if reply.ok:
                decision.action, decision.task, decision.dataflow = "migrate", t.task, t.dataflow
                decision.migration = reply.migration
                decision.reason = f"{why}: moving {t.task} ({t.rate_out:.0f} records/s out)"
                self.cool_until[f"{t.dataflow}/{t.task}"] = now + self.settings.overload_cooldown
                break
            log.info("rebalancer: %s cannot move: %s", t.task, reply.reason)
        else:
            decision.reason = f"{why}: no task can move off it ({len(listing.tasks)} there, none movable)"
        self.cool_until[d.id] = now + self.settings.overload_cooldown
        self.hot_since.pop(d.id, None)
        await self.store.record_decision(decision)
        if self.migrations.events is not None:
            await self.migrations.events.record(
                EventKind.rebalanced,
                decision.reason,
                dataflow=decision.dataflow,
                task=decision.task,
                device=d.id,
                subject=f"device {d.id}",
                action=decision.action,
                metric=metric,
                value=value,
                threshold=threshold,
            )
        log.warning("rebalancer: %s", decision.reason)
        return decision
