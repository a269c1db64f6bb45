"""Migrator wiring: NATS and Redis, the saga runner (resuming what a previous run left),
the NATS API, failover on lost devices, the adaptive rebalancer; a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from echo_shared import metrics
from echo_shared.credentials import Access
from echo_shared.events import EventLog
from echo_shared.leases import Leadership, Lease
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
        async with NatsBus(
            settings.nats_url, settings.service_name, access=access, replicas=settings.jetstream_replicas
        ) as bus:
            # a named replica restarted takes its lease back at once; unnamed ones never share
            owner = "migrator" + settings.replica_suffix() if settings.replica else None
            lease = Lease(redis, names.lease_key("migrator"), ttl=settings.leader_ttl, owner=owner)
            store = SagaStore(redis, names, lease)
            migrations = Migrations(bus, names, store, settings)
            migrations.events = EventLog(redis, names)
            service = MigratorService(bus, names, store, migrations)
            await service.serve()
            log.info("migrator ready (replica %s)", lease.owner)

            async def lead() -> None:
                """The leader's part: start migrations, run the sagas (resuming what the
                previous leader left), fail over lost devices' tasks, rebalance."""
                subs = await service.lead()
                try:
                    resumed = await migrations.resume_all()
                    log.info("migrator leads (%d migration(s) resumed)", resumed)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(FailoverWatcher(bus, names, migrations).follow(stop))
                        if settings.rebalance_enabled:
                            tg.create_task(Rebalancer(migrations, store, settings).run(stop))
                finally:
                    for sub in subs:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                    await migrations.close()

            exporter = metrics.serve(migrations.metrics.registry, settings, settings.service_name)
            try:
                await Leadership(lease, "migrator").run(stop, lead)
            finally:
                exporter.close()
                await migrations.close()
            log.info("migrator stopping")
    finally:
        await redis.aclose()
