"""Liveness: missed heartbeats make a device unreachable, then lost after the grace period.

Only heartbeats the registry could have received count as missed: the sweep pauses while
its own link to the MQTT broker is down, and after the link returns silence counts from
that moment (every device gets its full grace period again), so a broker restart never
makes healthy devices look lost. Likewise after a Redis outage (heartbeats could not be
recorded): sweeps pause, logged once per outage, and silence counts from its end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from echo_shared.lifecycle import wait_or_stop
from echo_shared.models import DeviceStatus
from echo_shared.outage import Outage, dependency_of

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
    for device, status, last in await store.liveness():
        if last is None or status in (DeviceStatus.lost, DeviceStatus.revoked):
            continue
        silence = now - max(float(last), watching_since)
        target = judge(silence, unreachable_after, lost_after)
        # only ever degrade here; heartbeats bring devices back
        if target is DeviceStatus.online or target == status:
            continue
        prev = await store.transition(device, target, now, expect=status, expect_heartbeat=last)
        if prev is not None:
            await events.changed(device, target, prev, f"no heartbeat for {silence:.1f}s")


async def run(
    store: DeviceStore,
    events: DeviceEvents,
    stop: asyncio.Event,
    *,
    period: float,
    unreachable_after: float,
    lost_after: float,
    link_up: Callable[[], bool] = lambda: True,
) -> None:
    started = time.time()
    link = Outage("the registry's MQTT link (liveness paused)", log)
    store_outage = Outage("liveness sweep: redis", log)
    while not await wait_or_stop(stop, period):
        if not link_up():
            link.failed("disconnected from the broker: heartbeats cannot arrive")
            continue
        if link.down:
            link.ok()
            started = time.time()  # silence counts from now: a full grace period for everyone
        try:
            if store_outage.down:  # heartbeats could not be recorded meanwhile: none was missed
                await store.liveness()
                store_outage.ok()
                started = time.time()
                continue
            await sweep(store, events, unreachable_after, lost_after, started)
        except Exception as e:
            if dependency_of(e) is None:
                log.exception("liveness sweep failed")
            else:
                store_outage.failed(e)
