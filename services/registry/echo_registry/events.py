"""Device up/down events on NATS (JetStream, so a consumer that restarts misses none)."""

from __future__ import annotations

import logging
import time

from echo_shared.events import EventKind, EventLog
from echo_shared.messages import DeviceEvent
from echo_shared.models import DeviceStatus
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

log = logging.getLogger(__name__)


KINDS = {
    DeviceStatus.unreachable: EventKind.device_unreachable,
    DeviceStatus.lost: EventKind.device_lost,
    DeviceStatus.revoked: EventKind.device_revoked,
}


class DeviceEvents:
    def __init__(self, bus: NatsBus, names: Names, log_: EventLog | None = None) -> None:
        self.bus = bus
        self.names = names
        self.log = log_  # the platform's event log (what users read), besides the bus events

    async def setup(self) -> None:
        await self.bus.ensure_stream(self.names.events_stream, [self.names.events_subjects])

    async def changed(
        self,
        device: str,
        status: DeviceStatus,
        previous: DeviceStatus | None,
        reason: str,
        *,
        restarted: bool = False,
    ) -> None:
        log.info(
            "device %s: %s -> %s (%s)", device, previous.value if previous else "new", status.value, reason
        )
        event = DeviceEvent(
            device=device,
            status=status,
            previous=previous,
            ts=time.time(),
            reason=reason,
            restarted=restarted,
        )
        await self.bus.publish_event(self.names.device_event(device, status.value), event)
        if self.log is not None:
            if status is DeviceStatus.online:
                kind = EventKind.device_registered if previous is None else EventKind.device_back
            else:
                kind = KINDS[status]
            was = f" (was {previous.value})" if previous else ""
            await self.log.record(kind, f"{device} is {status.value}{was}: {reason}", device=device)
