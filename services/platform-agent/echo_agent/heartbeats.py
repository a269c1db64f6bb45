"""Registration and heartbeats: what the device declares, and its utilisation every interval."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import time
from collections.abc import Awaitable, Callable

import psutil

from echo_shared import __version__
from echo_shared.lifecycle import wait_or_stop
from echo_shared.messages import DeviceHello, Heartbeat, TaskBrief
from echo_shared.models import Capacity, Connectivity, DeviceInfo

from . import runtimes
from .settings import AgentSettings

log = logging.getLogger(__name__)
PROBE_EVERY = 5


def device_info(s: AgentSettings) -> DeviceInfo:
    cpu = s.cpu if s.cpu is not None else float(os.cpu_count() or 1)
    mem = s.memory_mb if s.memory_mb is not None else int(psutil.virtual_memory().total // (1 << 20))
    return DeviceInfo(
        id=s.device_id,
        tier=s.tier,
        capacity=Capacity(cpu=cpu, memory_mb=mem),
        labels=s.labels,
        input_streams=s.input_streams,
        runtimes=s.runtimes
        if s.runtimes is not None
        else sorted(name for name, why_not in runtimes.detect().items() if why_not is None),
        accelerators=s.accelerators,
        site=s.site,
        connectivity=Connectivity(
            brokers=s.brokers if s.brokers is not None else (["mqtt", "nats"] if s.nats_url else ["mqtt"]),
            inbound=s.inbound,
        ),
        links=s.links,
        uplink=s.uplink,
        arch=platform.machine(),
        hostname=socket.gethostname(),
        agent_version=__version__,
        reaches_nats=bool(s.nats_url),
    )


def hello(info: DeviceInfo, boot_id: str) -> DeviceHello:
    return DeviceHello(device=info, boot_id=boot_id, ts=time.time())


async def run(
    device: str,
    boot_id: str,
    interval: float,
    briefs: Callable[[], list[TaskBrief]],
    send: Callable[[bytes], object],
    stop: asyncio.Event,
    probes: dict[str, Callable[[], Awaitable[float]]] | None = None,
    every_few: Callable[[], None] | None = None,
) -> None:
    """Send a heartbeat every ``interval`` seconds until ``stop``, with the round trip to
    each broker measured every ``PROBE_EVERY`` heartbeats (``probes``: broker -> coroutine
    returning seconds), and ``every_few`` called as often (the tasks' counters and rates)."""
    psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless
    rtt_ms: dict[str, float] = {}
    beats = 0
    while True:
        if probes and beats % PROBE_EVERY == 0:
            for broker, probe in probes.items():
                try:
                    async with asyncio.timeout(max(interval, 1.0)):
                        rtt_ms[broker] = round(await probe() * 1000, 3)
                except Exception as e:
                    log.debug("rtt probe of %s failed: %s", broker, e)
        beats += 1
        if every_few is not None and beats % PROBE_EVERY == 0:
            try:
                every_few()
            except Exception as e:
                log.warning("periodic report failed: %s", e)
        hb = Heartbeat(
            device=device,
            boot_id=boot_id,
            ts=time.time(),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            tasks=briefs(),
            rtt_ms=dict(rtt_ms),
        )
        try:
            send(hb.to_bytes())
        except Exception as e:  # never let a heartbeat failure kill the agent
            log.warning("heartbeat not sent: %s", e)
        if await wait_or_stop(stop, interval):
            return
