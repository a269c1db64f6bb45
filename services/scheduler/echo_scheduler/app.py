"""Scheduler wiring: connect to NATS, serve validate/place in a queue group, stop cleanly."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from echo_shared import metrics
from echo_shared.credentials import Access
from echo_shared.messages import PlaceRequest, ValidateRequest
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

from .service import SchedulerService
from .settings import SchedulerSettings

log = logging.getLogger(__name__)


async def run(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    access = Access.from_settings(settings)
    async with NatsBus(
        settings.nats_url, settings.service_name, access=access, replicas=settings.jetstream_replicas
    ) as bus:
        service = SchedulerService(bus, names, settings.registry_timeout)
        await bus.serve(names.scheduler_validate, names.scheduler_queue, ValidateRequest, service.validate)
        await bus.serve(names.scheduler_place, names.scheduler_queue, PlaceRequest, service.place)

        async def device_changed(_msg: Msg) -> None:
            service.view.changed()

        await bus.subscribe_raw(names.device_events_all, device_changed)
        exporter = metrics.serve(service.metrics.registry, settings, settings.service_name)
        log.info("scheduler ready")
        try:
            await stop.wait()
        finally:
            exporter.close()
        log.info("scheduler stopping")
