"""Agent wiring: the control session, registration, heartbeats and the task manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from echo_shared.messages import Goodbye
from echo_shared.mqtt import MqttClient, Will
from echo_shared.names import Names
from echo_shared.telemetry import inject, tracer

from . import heartbeats
from .control import TaskManager
from .errors import DuplicateDevice
from .settings import AgentSettings

log = logging.getLogger(__name__)


async def run(settings: AgentSettings, stop: asyncio.Event) -> None:
    names = Names(settings.namespace)
    device = settings.device_id
    boot_id = uuid.uuid4().hex
    info = heartbeats.device_info(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    control: MqttClient | None = None

    def publish(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> asyncio.Future[None]:
        assert control is not None
        return control.publish(topic, payload, qos=qos, retain=retain, user_properties=inject() or None)

    manager = TaskManager(
        device=device,
        mqtt_url=settings.mqtt_url,
        names=names,
        data_dir=settings.data_dir,
        session_expiry=settings.task_session_expiry,
        publish=publish,
        channel_window=settings.channel_window,
        nats_url=settings.nats_url,
        checkpoint_interval=settings.checkpoint_interval,
    )
    will = Will(
        names.bye_topic(device), Goodbye(device=device, boot_id=boot_id, reason="connection lost").to_bytes()
    )
    control = MqttClient(
        settings.mqtt_url,
        names.agent_client_id(device),
        on_message=manager.on_command,
        persistent=True,
        manual_ack=True,
        will=will,
        keepalive=max(2, int(settings.unreachable_after)),
    )
    manager.control = control
    await control.start(timeout=30)
    try:
        with tracer("echo.agent").start_as_current_span("agent register"):
            await control.subscribe(names.command_topic(device), qos=1)
            await publish(names.hello_topic(device), heartbeats.hello(info, boot_id).to_bytes(), retain=True)
        log.info("agent %s (%s) ready", device, settings.tier.value)

        async def watch_contention() -> None:
            await control.taken_over.wait()
            log.error("another agent runs with device id %s; this one stops", device)
            stop.set()

        watcher = asyncio.create_task(watch_contention())
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
            log.info("agent %s stopping", device)
            await manager.shutdown()
            bye = Goodbye(device=device, boot_id=boot_id, reason="agent stopped")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control.publish(names.bye_topic(device), bye.to_bytes(), qos=1), 2)
    finally:
        await control.close()
    if control.taken_over.is_set():
        raise DuplicateDevice(f"device id {device} is already taken by another agent")
