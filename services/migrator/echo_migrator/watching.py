"""Following device events from JetStream with a durable consumer."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from echo_shared.messages import DeviceEvent
from echo_shared.models import DeviceStatus
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

log = logging.getLogger(__name__)


async def follow_device_events(bus: NatsBus, names: Names, stop: asyncio.Event) -> None:
    await bus.ensure_stream(names.events_stream, [names.events_subjects])
    sub = await bus.js.pull_subscribe(
        names.device_events_all,
        durable=f"{names.namespace}-migrator",
        stream=names.events_stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW),
    )
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=64, timeout=0.5)
            except TimeoutError:
                continue
            await _handle(msgs)
    finally:
        await sub.unsubscribe()


async def _handle(msgs: list[Msg]) -> None:
    for m in msgs:
        try:
            event = DeviceEvent.from_bytes(m.data)
            if event.status is DeviceStatus.lost:
                log.warning(
                    "device %s lost (%s); failover is not enabled in this release", event.device, event.reason
                )
            else:
                log.info("device %s is %s", event.device, event.status.value)
        except ValidationError as e:
            log.warning("bad device event: %s", e)
        await m.ack()
