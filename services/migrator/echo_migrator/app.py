"""Migrator wiring: NATS and Redis, the device-event follower, a clean stop."""

from __future__ import annotations

import asyncio
import logging

from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.redis_store import connect_redis

from .settings import MigratorSettings
from .watching import follow_device_events

log = logging.getLogger(__name__)


async def run(settings: MigratorSettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    redis = await connect_redis(settings.redis_url)
    try:
        async with NatsBus(settings.nats_url, settings.service_name) as bus:
            log.info("migrator ready")
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follow_device_events(bus, names, stop))
            log.info("migrator stopping")
    finally:
        await redis.aclose()
