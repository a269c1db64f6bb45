"""Master wiring: Redis, NATS, the MQTT control link, the reconciler and the REST server
(HTTPS when ``ECHO_API_TLS``; the first admin token from ``ECHO_ADMIN_TOKEN_FILE``).

Replicas: every one serves the API, the auth callout, task listings and credentials; the one
that holds the master's lease (``echo_shared.leases``) leads: it runs the reconciler, follows
device events, moves tasks for the migrator, retires old logins and applies the agents'
reports (a standby holds them, ``agents_link``). Its writes are fenced by the lease.

Shutdown order: stop serving HTTP, stop the reconciler, then close the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import uvicorn
from nats.aio.msg import Msg
from pydantic import ValidationError

from echo_shared import metrics as prometheus
from echo_shared.credentials import Access, Credentials, is_tls_url
from echo_shared.events import EventLog
from echo_shared.leases import Leadership, Lease
from echo_shared.messages import DeviceEvent, MoveTaskRequest, TaskCheckpoint, TaskListRequest
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus, connection_callbacks, nats_servers
from echo_shared.redis_store import connect_redis
from echo_shared.secretfiles import SecretFileError, check_private, read_secret

from .access_control import DeviceAccess
from .agents_link import AgentLink
from .api import create_api
from .audit import AuditLog
from .callout_thread import CalloutThread
from .context import ApiContext
from .devices_api import devices_router
from .errors import ApiListenError, ApiTlsError
from .identities import IdentityStore
from .metrics import MasterMetrics
from .moving import TaskMover
from .nats_logins import NatsKicker
from .reconciling import Reconciler
from .settings import MasterSettings
from .snapshots import SnapshotStore
from .store import DataflowStore
from .tokens import TokenStore

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service's supervisor owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tls_options(settings: MasterSettings) -> dict[str, Any]:
    """uvicorn's HTTPS options (empty: plain HTTP); ``ApiTlsError`` if the files are not usable."""
    if not settings.api_tls:
        return {}
    files: dict[str, Path | None] = {
        "ECHO_API_CERT_FILE": settings.api_cert_file,
        "ECHO_API_KEY_FILE": settings.api_key_file,
    }
    for var, path in files.items():
        if path is None:
            raise ApiTlsError(f"ECHO_API_TLS is on but {var} is not set")
        if not path.is_file():
            raise ApiTlsError(f"ECHO_API_TLS is on but {var} ({path}) is not a readable file")
    assert settings.api_cert_file is not None and settings.api_key_file is not None
    check_private(settings.api_key_file)  # a private key others can read is refused
    return {"ssl_certfile": str(settings.api_cert_file), "ssl_keyfile": str(settings.api_key_file)}


async def nats_kicker(
    settings: MasterSettings, access: Access, store: IdentityStore, names: Names
) -> NatsKicker | None:
    """The master's login in NATS' system account (to disconnect revoked devices), if it has one."""
    creds = Credentials.load(settings.credentials_file) if settings.credentials_file else None
    if creds is None or not creds.nats_system_username or creds.nats_system_password is None:
        return None
    nc = await nats.connect(
        nats_servers(settings.nats_url),
        name=f"{settings.service_name}-system",
        user=creds.nats_system_username,
        password=creds.nats_system_password.get_secret_value(),
        tls=access.tls() if access.nats_url and is_tls_url(access.nats_url) else None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        **connection_callbacks(f"{settings.service_name}-system"),
    )
    return NatsKicker(nc, store, names)


async def run(settings: MasterSettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    tls = tls_options(settings)  # before anything connects: a bad file is a one-line error
    admin_token = read_secret(settings.admin_token_file) if settings.admin_token_file else None
    if admin_token == "":
        raise SecretFileError(f"the admin token file {settings.admin_token_file} is empty")
    access = Access.from_settings(settings)
    redis = await connect_redis(settings.redis_url, access=access)
    try:
        async with NatsBus(
            settings.nats_url, settings.service_name, access=access, replicas=settings.jetstream_replicas
        ) as bus:
            # a named replica restarted takes its lease back at once; unnamed ones never share
            owner = "master" + settings.replica_suffix() if settings.replica else None
            lease = Lease(redis, names.lease_key("master"), ttl=settings.leader_ttl, owner=owner)
            leadership = Leadership(lease, "master")
            # set once the leader has seeded what it knows and taken over the held reports
            # (lead()); before that, reports are still held, so none is applied out of order
            acting = asyncio.Event()
            store = DataflowStore(redis, names, lease=lease)
            # the audit trail: the API records mutating calls; other parts may record events
            audit = AuditLog(redis, names, max_entries=settings.audit_max_entries)
            tokens = TokenStore(redis, names, cache_seconds=settings.token_cache_seconds)
            if admin_token is not None:
                await tokens.register_bootstrap(admin_token)
            else:
                log.warning(
                    "no ECHO_ADMIN_TOKEN_FILE: no bootstrap admin token (API tokens that exist still work)"
                )
            reconciler: Reconciler | None = None

            async def on_update(update: object) -> None:
                assert reconciler is not None
                await reconciler.on_update(update)  # type: ignore[arg-type]

            mover: TaskMover | None = None

            async def on_checkpoint(ckpt: TaskCheckpoint) -> None:
                assert mover is not None
                await mover.on_checkpoint(ckpt)

            secured = access.mqtt is not None  # a secured broker: the master administers its dynsec
            kicker = await nats_kicker(settings, access, IdentityStore(redis, names), names)
            link = AgentLink(
                settings.mqtt_url,
                names,
                on_update,
                on_checkpoint,
                access=access,
                dynsec=secured,
                replica=settings.replica_suffix(),
            )
            link.leading = acting.is_set
            device_access = DeviceAccess(
                IdentityStore(redis, names, lease=lease),  # grants: the leader's, fenced
                names,
                bus,
                dynsec=link.dynsec,
                mqtt_url=settings.device_mqtt_url or settings.mqtt_url,
                nats_url=settings.device_nats_url or settings.nats_url,
                ca_file=access.ca_file,
                rotation_grace=settings.rotation_grace,
                send=link.send_credentials,
                audit=audit,
                kicker=kicker,
            )
            link.hooks = device_access
            reconciler = Reconciler(store, link, bus, names, settings)
            reconciler.leading = acting.is_set
            figures = MasterMetrics(store, asyncio.get_running_loop())
            figures.registry.register(
                prometheus.CountsCollector(
                    prometheus.MQTT_PARTS_DROPPED,
                    "messages in parts from the agents dropped on receipt, by reason",
                    "reason",
                    lambda: link.mqtt.parts.dropped,
                )
            )
            reconciler.metrics = figures
            reconciler.events = EventLog(redis, names)
            snapshots = SnapshotStore(bus, names, settings.state_inline_max_bytes)
            reconciler.snapshots = snapshots
            mover = TaskMover(store, reconciler, snapshots)

            async def on_device_event(msg: Msg) -> None:
                try:
                    event = DeviceEvent.from_bytes(msg.data)
                except ValidationError as e:
                    log.warning("bad device event: %s", e)
                    return
                await reconciler.on_device_event(event)

            await bus.ensure_stream(names.events_stream, [names.events_subjects])
            await bus.ensure_data_plane(names)  # devices may only look the channels' stream up
            callout = None
            issuer = (
                Credentials.load(settings.credentials_file).nats_issuer_seed
                if settings.credentials_file
                else None
            )
            if issuer is not None:  # devices' NATS logins come to us (auth callout, its own thread)
                callout = CalloutThread(access, names, issuer.get_secret_value())
                await callout.start()
            await link.start()
            exporter: prometheus.MetricsServer | None = None
            try:
                exporter = prometheus.serve(figures.registry, settings, settings.service_name)
                api = create_api(
                    ApiContext(
                        settings, names, store, reconciler, bus, redis, link.mqtt, tokens, audit, figures
                    )
                )
                api.include_router(devices_router(device_access))
                server = _Server(
                    uvicorn.Config(
                        api,
                        host=settings.api_host,
                        port=settings.api_port,
                        log_config=None,
                        access_log=False,
                        lifespan="off",
                        # idle keep-alive clients (over TLS uvicorn may wait on them) do not
                        # hold the shutdown: long polls and requests get this long to finish
                        timeout_graceful_shutdown=2,
                        **tls,
                    )
                )

                async def stop_server() -> None:
                    await stop.wait()
                    server.should_exit = True

                await bus.serve(names.master_tasks, names.master_queue, TaskListRequest, mover.tasks)

                async def on_kick(msg: Msg) -> None:
                    reconciler.kick(msg.data.decode(errors="replace"))

                async def lead() -> None:
                    """The leader's part: reconcile (what was recorded counts as seen), apply
                    the agents' reports (those held as a standby first), follow device events,
                    move tasks, retire old logins."""
                    await reconciler.elected()
                    link.elected()  # the held reports first, then what arrives: no await between
                    acting.set()
                    subs = []
                    try:
                        subs.append(
                            await bus.serve(
                                names.master_move, names.master_queue, MoveTaskRequest, mover.move
                            )
                        )
                        subs.append(await bus.nc.subscribe(names.master_kick, cb=on_kick))
                        async with asyncio.TaskGroup() as leader:
                            leader.create_task(reconciler.run(stop))
                            leader.create_task(device_access.run_retirement(stop))
                            leader.create_task(
                                bus.follow(
                                    names.events_stream,
                                    names.device_events_all,
                                    f"{names.namespace}-master",
                                    on_device_event,
                                    stop,
                                )
                            )
                    finally:
                        acting.clear()
                        link.stepped_down()
                        for sub in subs:
                            with contextlib.suppress(Exception):
                                await sub.unsubscribe()

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(link.run(stop))
                    tg.create_task(leadership.run(stop, lead))
                    tg.create_task(stop_server())
                    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                        await server.serve()
                    stop.set()  # every loop ends by itself (not only by a cancel, which a
                    # library may swallow: then a master that cannot serve would linger)
                    if not server.started:
                        raise ApiListenError(f"the REST API could not listen on port {settings.api_port}")
                log.info("master stopped")
            finally:
                if exporter is not None:
                    exporter.close()
                if callout is not None:
                    await callout.close()
                if kicker is not None:
                    await kicker.close()
                await link.close()
    finally:
        await redis.aclose()
