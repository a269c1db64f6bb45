"""Registry wiring: Redis, NATS, MQTT; the intake, the liveness sweep and the directory."""

from __future__ import annotations

import asyncio
import logging

from echo_shared import metrics
from echo_shared.credentials import Access
from echo_shared.events import EventLog
from echo_shared.leases import Leadership, Lease
from echo_shared.messages import DeviceGetRequest, DeviceListRequest, DeviceRevokeRequest
from echo_shared.mqtt import MqttClient
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.redis_store import connect_redis

from . import liveness
from .directory import Directory
from .events import DeviceEvents
from .heartbeats import Intake
from .metrics import heartbeat_lag, registry_metrics
from .settings import RegistrySettings
from .store import DeviceStore

log = logging.getLogger(__name__)


async def run(settings: RegistrySettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    access = Access.from_settings(settings)
    redis = await connect_redis(settings.redis_url, access=access)
    try:
        async with NatsBus(
            settings.nats_url, settings.service_name, access=access, replicas=settings.jetstream_replicas
        ) as bus:
            store = DeviceStore(redis, names)
            events = DeviceEvents(bus, names, EventLog(redis, names))
            await events.setup()
            directory = Directory(store, events)
            await bus.serve(names.registry_list, names.registry_queue, DeviceListRequest, directory.list)
            await bus.serve(names.registry_get, names.registry_queue, DeviceGetRequest, directory.get)
            queue = names.registry_queue
            await bus.serve(names.registry_revoke, queue, DeviceRevokeRequest, directory.revoke)
            exported = registry_metrics(store, asyncio.get_running_loop())
            intake = Intake(store, events, names, lag=heartbeat_lag(exported))
            # a named replica restarted takes its lease back at once; unnamed ones never share
            owner = "registry" + settings.replica_suffix() if settings.replica else None
            lease = Lease(redis, names.lease_key("registry"), ttl=settings.leader_ttl, owner=owner)
            leadership = Leadership(lease, "registry")
            intake.leading = leadership.elected.is_set
            mqtt = MqttClient(
                settings.mqtt_url,
                names.service_client_id("registry") + settings.replica_suffix(),
                on_message=intake.on_message,
                persistent=True,
                manual_ack=True,
                login=access.mqtt,
                tls=access.tls(),
                yield_session=False,  # a service never goes deaf: it keeps reconnecting
            )
            intake.mqtt = mqtt
            await mqtt.start(timeout=30)
            exporter = metrics.serve(exported, settings, settings.service_name)
            try:
                await mqtt.subscribe(intake.topics(), qos=1)
                log.info("registry ready")

                async def lead() -> None:
                    """The leader's part: take what devices say, judge liveness (silence
                    counts from now on: every device gets its whole grace period)."""
                    intake.elected()
                    await liveness.run(
                        store,
                        events,
                        stop,
                        period=settings.liveness_period,
                        unreachable_after=settings.unreachable_after,
                        lost_after=settings.lost_after,
                        link_up=lambda: mqtt.connected,
                    )

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(intake.run(stop))
                    tg.create_task(leadership.run(stop, lead))
                log.info("registry stopping")
            finally:
                exporter.close()
                await mqtt.close()
    finally:
        await redis.aclose()
