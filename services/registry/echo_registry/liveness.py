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
    store: DeviceStore,
    events: DeviceEvents,
    unreachable_after: float,
    lost_after: float,
    watching_since: float = 0.0,
) -> None:
    """Degrade devices that went silent. Silence counts from ``watching_since`` at the
    earliest: heartbeats sent while this registry was not running were not missed by the
    devices and must not make them look unreachable."""
    now = time.time()
    for record, raw in await store.all():
        if record.last_heartbeat is None or record.status in (DeviceStatus.lost, DeviceStatus.revoked):
            continue
        silence = now - max(record.last_heartbeat, watching_since)
        target = judge(silence, unreachable_after, lost_after)
        # only ever degrade here; heartbeats bring devices back
        if target is DeviceStatus.online or target == record.status:
            continue
        prev = await store.transition(
            record.id, target, now, expect=record.status, expect_heartbeat=raw.get("last_heartbeat")
        )
        if prev is not None:
            await events.changed(record.id, target, prev, f"no heartbeat for {silence:.1f}s")


async def run(
    store: DeviceStore,
    events: DeviceEvents,
    stop: asyncio.Event,
    *,
    period: float,
    unreachable_after: float,
    lost_after: float,
) -> None:
    started = time.time()
    while not await wait_or_stop(stop, period):
        try:
            await sweep(store, events, unreachable_after, lost_after, started)
        except Exception:
            log.exception("liveness sweep failed")
