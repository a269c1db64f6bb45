"""Following device events from JetStream with a durable consumer."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from pydantic import ValidationError

from echo_shared.messages import DeviceEvent
from echo_shared.models import DeviceStatus
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

log = logging.getLogger(__name__)


async def on_device_event(m: Msg) -> None:
    try:
        event = DeviceEvent.from_bytes(m.data)
    except ValidationError as e:
        log.warning("bad device event: %s", e)
        return
    if event.status is DeviceStatus.lost:
        log.warning(
            "device %s lost (%s); failover is not enabled in this release", event.device, event.reason
        )
    else:
        log.info("device %s is %s", event.device, event.status.value)


async def follow_device_events(bus: NatsBus, names: Names, stop: asyncio.Event) -> None:
    await bus.ensure_stream(names.events_stream, [names.events_subjects])
    await bus.follow(
        names.events_stream, names.device_events_all, f"{names.namespace}-migrator", on_device_event, stop
    )
