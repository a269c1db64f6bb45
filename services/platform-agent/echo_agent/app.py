"""Agent wiring: the control session, registration, heartbeats and the task manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from pydantic import ValidationError

from echo_shared.credentials import Credentials
from echo_shared.messages import CredentialsAck, Goodbye, RotateCredentials
from echo_shared.mqtt import MqttClient, MqttMessage, Will
from echo_shared.names import Names
from echo_shared.telemetry import inject, tracer

from . import heartbeats, identity, runtimes
from .control import TaskManager
from .dataplane.outbox import SpoolSettings
from .errors import CredentialsRefused, DuplicateDevice
from .identity import EnrolmentFailed
from .localtasks import LocalTasks
from .settings import AgentSettings

log = logging.getLogger(__name__)


async def run(settings: AgentSettings, stop: asyncio.Event, creds: Credentials | None = None) -> None:
    settings = identity.apply(settings, creds)
    if not settings.mqtt_url:
        raise EnrolmentFailed("no MQTT broker: set ECHO_MQTT_URL or enrol the device (--enrol-token)")
    access = identity.access_of(settings, creds)
    names = Names(settings.namespace)
    device = settings.device_id
    boot_id = uuid.uuid4().hex
    info = heartbeats.device_info(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    control: MqttClient | None = None

    def publish(
        topic: str, payload: bytes | list[bytes], qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        assert control is not None
        return control.publish(topic, payload, qos=qos, retain=retain, user_properties=inject() or None)

    manager = TaskManager(
        device=device,
        mqtt_url=settings.mqtt_url,
        names=names,
        data_dir=settings.data_dir,
        session_expiry=settings.task_session_expiry,
        shared_data_session=settings.data_session == "agent",
        publish=publish,
        channel_window=settings.channel_window,
        nats_url=settings.nats_url,
        checkpoint_interval=settings.checkpoint_interval,
        trace_records=settings.trace_records,
        access=access,
        runtimes=runtimes.policy_of(settings),
        spools=(
            SpoolSettings(
                settings.data_dir / ".spool",
                max_bytes=settings.spool_max_bytes,
                max_age=settings.spool_max_age,
                overflow=settings.spool_overflow,
                fsync=settings.spool_fsync,
            )
            if settings.spool
            else None
        ),
        local=LocalTasks(settings.data_dir / ".tasks" if settings.keep_tasks else None),
        keepalive=max(2, int(settings.unreachable_after)),
    )
    kept = manager.local.load()  # tasks to resume: they run whether or not the broker answers
    will = Will(
        names.bye_topic(device), Goodbye(device=device, boot_id=boot_id, reason="connection lost").to_bytes()
    )
    rotation = Rotation(settings, creds, manager)
    control = MqttClient(
        settings.mqtt_url,
        names.agent_client_id(device),
        on_message=rotation.route,
        persistent=True,
        manual_ack=True,
        will=will,
        keepalive=max(2, int(settings.unreachable_after)),
        login=access.mqtt,
        tls=access.tls(),
        whole_payloads=False,  # a command in parts (a large state) is read from its parts
    )
    manager.control = control
    rotation.control = control
    # with tasks to resume, a broker out of reach is no reason to wait: they run offline
    await control.start(timeout=5 if kept else 30, offline_ok=bool(kept))
    resuming: asyncio.Task[None] | None = None
    if kept:
        if not control.connected:
            manager.data_session().connect_timeout = 2.0  # cut off: start the tasks offline now
        # beside the registration, not before it: a task slow to start must not keep the
        # device silent; a command for one of them waits for its resumption (per-task lock)
        resuming = asyncio.create_task(manager.resume_local(kept))
    data = asyncio.create_task(manager.open_data_session())
    try:
        with tracer("echo.agent").start_as_current_span("agent register"):
            await control.subscribe(names.command_topic(device), qos=1)
            await publish(names.hello_topic(device), heartbeats.hello(info, boot_id).to_bytes(), retain=True)
        log.info("agent %s (%s) ready", device, settings.tier.value)

        async def watch_contention() -> None:
            await control.taken_over.wait()
            log.error("another agent runs with device id %s; this one stops", device)
            stop.set()

        async def watch_refusal() -> None:
            await control.refused.wait()
            log.error("the broker refuses the credentials of %s (revoked?); the agent stops", device)
            stop.set()

        watcher = asyncio.create_task(watch_contention())
        refusal = asyncio.create_task(watch_refusal())
        try:

            async def probe_mqtt() -> float:
                t0 = time.perf_counter()
                await control.publish(names.probe_topic(device), b"", qos=1)
                return time.perf_counter() - t0

            await heartbeats.run(
                device,
                boot_id,
                settings.heartbeat_interval,
                manager.briefs,
                lambda b: control.publish(names.heartbeat_topic(device), b, qos=0),
                stop,
                probes={"mqtt": probe_mqtt},
                every_few=manager.report_progress,
                usage=heartbeats.Usage(settings.utilisation, info.capacity.cpu, info.capacity.memory_mb),
            )
        finally:
            watcher.cancel()
            refusal.cancel()
            data.cancel()
            if resuming is not None:
                resuming.cancel()
            log.info("agent %s stopping", device)
            await manager.shutdown()
            bye = Goodbye(device=device, boot_id=boot_id, reason="agent stopped")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control.publish(names.bye_topic(device), bye.to_bytes(), qos=1), 2)
    finally:
        await control.close()
    if control.refused.is_set():  # first: refused reconnects also look like a contested session
        raise CredentialsRefused(f"the broker refuses the credentials of device {device}")
    if control.taken_over.is_set():
        raise DuplicateDevice(f"device id {device} is already taken by another agent")


class Rotation:
    """Routes the control session's messages: new credentials here, task commands to the manager."""

    def __init__(self, settings: AgentSettings, creds: Credentials | None, manager: TaskManager) -> None:
        self.settings = settings
        self.creds = creds
        self.manager = manager
        self.control: MqttClient | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def route(self, msg: MqttMessage) -> None:
        if b'"kind":"checkpoint_stored"' in msg.payload:
            self.manager.on_checkpoint_stored(msg)
            return
        if b'"kind":"login_ahead"' in msg.payload:
            self.manager.on_login_ahead(msg)
            return
        if b'"kind":"credentials"' not in msg.payload:
            self.manager.on_command(msg)
            return
        t = asyncio.create_task(self._rotate(msg))
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)

    async def _rotate(self, msg: MqttMessage) -> None:
        assert self.control is not None
        device = self.settings.device_id
        try:
            cmd = RotateCredentials.from_bytes(msg.payload)
        except ValidationError as e:
            log.warning("dropping malformed credentials: %s", e.errors()[:3])
            self.control.ack(msg)
            return
        ok, reason = True, ""
        if cmd.device != device or self.creds is None:
            ok, reason = (
                False,
                f"not for {device}" if cmd.device != device else "this agent has no credentials file",
            )
        else:
            try:
                self.creds = identity.save_rotation(self.settings, self.creds, cmd)
            except OSError as e:
                ok, reason = False, f"cannot save the new credentials: {e}"
        if ok and self.creds is not None:
            access = identity.access_of(self.settings, self.creds)
            login = identity.login_of(self.creds)
            if login is not None:
                self.control.relogin(login)
                self.manager.relogin(login)
                if access.nats is not None:
                    self.manager.relogin_nats(access.nats.username, access.nats.password)
            self.manager.access = access
            log.info("device %s: new credentials (%s) in use from the next connect", device, cmd.username)
        ack = CredentialsAck(cmd_id=cmd.cmd_id, device=device, ok=ok, reason=reason)
        self.control.publish(self.manager.names.ack_topic(device), ack.to_bytes(), qos=1)
        self.control.ack(msg)
