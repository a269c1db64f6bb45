"""Reading the registry's device list over the bus, page by page.

A fleet's records do not fit one NATS message (1 MB by default: ~1,900 devices), so the
registry answers ``DeviceListRequest`` a page at a time and every reader goes through
``list_devices``."""

from __future__ import annotations

from .messages import DeviceListReply, DeviceListRequest
from .models import DeviceRecord, DeviceStatus
from .names import Names
from .nats_bus import NatsBus

MAX_PAGES = 1_000  # 500,000 devices: a registry that never ends a list is a bug, not a fleet


async def list_devices(
    bus: NatsBus, names: Names, status: DeviceStatus | None = None, timeout: float = 5.0
) -> list[DeviceRecord]:
    """Every device record (of ``status`` when given), in id order."""
    out: list[DeviceRecord] = []
    after = ""
    for _ in range(MAX_PAGES):
        reply = await bus.request(
            names.registry_list,
            DeviceListRequest(status=status, after=after),
            DeviceListReply,
            timeout=timeout,
        )
        out.extend(reply.devices)
        if not reply.next_after:
            return out
        after = reply.next_after
    raise RuntimeError(f"the registry's device list did not end after {MAX_PAGES} pages")
