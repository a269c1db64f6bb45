"""Liveness: missed heartbeats make a device unreachable, then lost after the grace period."""

from __future__ import annotations

import asyncio
import logging
import time

from echo_shared.lifecycle import wait_or_stop
from echo_shared.models import DeviceStatus

from .events import DeviceEvents
from .store import DeviceStore

log = logging.getLogger(__name__)


def judge(silence: float, unreachable_after: float, lost_after: float) -> DeviceStatus:
    """The status a device deserves after ``silence`` seconds without a heartbeat."""
    if silence >= lost_after:
        return DeviceStatus.lost
    if silence >= unreachable_after:
        return DeviceStatus.unreachable
    return DeviceStatus.online


async def sweep(
    store: DeviceStore, events: DeviceEvents, unreachable_after: float, lost_after: float
) -> None:
    now = time.time()
    for record, raw in await store.all():
        if record.last_heartbeat is None or record.status is DeviceStatus.lost:
            continue
        target = judge(now - record.last_heartbeat, unreachable_after, lost_after)
        # only ever degrade here; heartbeats bring devices back
        if target is DeviceStatus.online or target == record.status:
            continue
        prev = await store.transition(
            record.id, target, now, expect=record.status, expect_heartbeat=raw.get("last_heartbeat")
        )
        if prev is not None:
            await events.changed(
                record.id, target, prev, f"no heartbeat for {now - record.last_heartbeat:.1f}s"
            )


async def run(
    store: DeviceStore,
    events: DeviceEvents,
    stop: asyncio.Event,
    *,
    period: float,
    unreachable_after: float,
    lost_after: float,
) -> None:
    while not await wait_or_stop(stop, period):
        try:
            await sweep(store, events, unreachable_after, lost_after)
        except Exception:
            log.exception("liveness sweep failed")
