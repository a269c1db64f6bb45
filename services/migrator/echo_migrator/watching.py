"""Device events (JetStream, durable consumer): a ``lost`` device's tasks fail over.

``unreachable`` is not ``lost``: tasks keep running on a device that is only cut off.
Once it is ``lost``, each task placed there is migrated in ``failover`` mode (the
scheduler picks the target; the task restores its latest checkpoint and its producers
replay what came after it). The master stops the stale copies if the device returns.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from pydantic import ValidationError

from echo_shared.events import EventKind
from echo_shared.messages import DeviceEvent, MigrateRequest
from echo_shared.models import DeviceStatus
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.telemetry import tracer

from .migrating import Migrations, StepFailed

log = logging.getLogger(__name__)


class FailoverWatcher:
    def __init__(self, bus: NatsBus, names: Names, migrations: Migrations) -> None:
        self.bus = bus
        self.names = names
        self.migrations = migrations

    async def on_device_event(self, m: Msg) -> None:
        try:
            event = DeviceEvent.from_bytes(m.data)
        except ValidationError as e:
            log.warning("bad device event: %s", e)
            return
        log.info("device %s is %s", event.device, event.status.value)
        if event.status in (DeviceStatus.lost, DeviceStatus.revoked):
            await self.fail_over(event.device, event.reason or event.status.value)

    async def fail_over(self, device: str, why: str) -> list[str]:
        """Move every task off a lost or revoked device: one trace, the tasks' migrations in it."""
        with tracer("echo.migrator").start_as_current_span(
            f"failover {device}", attributes={"echo.device": device, "echo.reason": why}
        ):
            return await self._fail_over(device, why)

    async def _fail_over(self, device: str, why: str) -> list[str]:
        try:
            listing = await self.migrations.tasks(device=device)
        except StepFailed as e:
            log.error("failover of %s: %s", device, e)
            raise  # not acknowledged: the event comes again
        started = []
        for t in listing.tasks:
            reply = await self.migrations.start(
                MigrateRequest(
                    dataflow=t.dataflow, task=t.task, origin="failover", reason=f"{device} gone ({why})"
                ),
                failover=True,
            )
            if reply.ok and reply.migration:
                started.append(reply.migration)
                self.migrations.metrics.failed_over()
                if self.migrations.events is not None:
                    await self.migrations.events.record(
                        EventKind.failed_over,
                        f"{t.task} fails over from {device} ({why})",
                        dataflow=t.dataflow,
                        task=t.task,
                        device=device,
                        migration=reply.migration,
                    )
            else:
                log.info("failover of %s/%s from %s: %s", t.dataflow, t.task, device, reply.reason)
        if started:
            log.warning("device %s lost: %d task(s) failing over", device, len(started))
        return started

    async def follow(self, stop: asyncio.Event) -> None:
        await self.bus.ensure_stream(self.names.events_stream, [self.names.events_subjects])
        await self.bus.follow(
            self.names.events_stream,
            self.names.device_events_all,
            f"{self.names.namespace}-migrator",
            self.on_device_event,
            stop,
        )
