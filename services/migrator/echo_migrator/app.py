"""Migrator wiring: NATS and Redis, the saga runner (resuming what a previous run left),
the NATS API, failover on lost devices, the adaptive rebalancer; a clean stop."""

from __future__ import annotations

import asyncio
import logging

from echo_shared import metrics
from echo_shared.credentials import Access
from echo_shared.events import EventLog
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.redis_store import connect_redis

from .balancing import Rebalancer
from .migrating import Migrations
from .sagas import SagaStore
from .service import MigratorService
from .settings import MigratorSettings
from .watching import FailoverWatcher

log = logging.getLogger(__name__)


async def run(settings: MigratorSettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    access = Access.from_settings(settings)
    redis = await connect_redis(settings.redis_url, access=access)
    try:
        async with NatsBus(settings.nats_url, settings.service_name, access=access) as bus:
            store = SagaStore(redis, names)
            migrations = Migrations(bus, names, store, settings)
            migrations.events = EventLog(redis, names)
            await MigratorService(bus, names, store, migrations).serve()
            resumed = await migrations.resume_all()
            log.info("migrator ready (%d migration(s) resumed)", resumed)
            exporter = metrics.serve(migrations.metrics.registry, settings, settings.service_name)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(FailoverWatcher(bus, names, migrations).follow(stop))
                    if settings.rebalance_enabled:
                        tg.create_task(Rebalancer(migrations, store, settings).run(stop))
            finally:
                exporter.close()
                await migrations.close()
            log.info("migrator stopping")
    finally:
        await redis.aclose()
