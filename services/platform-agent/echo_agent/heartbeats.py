"""Registration and heartbeats: what the device declares, and its utilisation every interval."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import time
from collections.abc import Callable

import psutil

from echo_shared import __version__
from echo_shared.lifecycle import wait_or_stop
from echo_shared.messages import DeviceHello, Heartbeat, TaskBrief
from echo_shared.models import Capacity, DeviceInfo

from . import runtimes
from .settings import AgentSettings

log = logging.getLogger(__name__)


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
) -> None:
    """Send a heartbeat every ``interval`` seconds until ``stop``."""
    psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless
    while True:
        hb = Heartbeat(
            device=device,
            boot_id=boot_id,
            ts=time.time(),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            tasks=briefs(),
        )
        try:
            send(hb.to_bytes())
        except Exception as e:  # never let a heartbeat failure kill the agent
            log.warning("heartbeat not sent: %s", e)
        if await wait_or_stop(stop, interval):
            return
