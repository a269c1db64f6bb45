"""Registration and heartbeats: what the device declares, and its utilisation every interval
(the whole machine's, or with ``ECHO_UTILISATION=agent`` this agent's against the device's
declared capacity). The runtimes it declares are those its agent accepts
(``echo_agent.runtimes.gating``: the safe defaults plus what ``--runtime`` enabled)."""

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

from . import runtimes, throughput
from .settings import AgentSettings

log = logging.getLogger(__name__)
PROBE_EVERY = 5


def device_info(s: AgentSettings) -> DeviceInfo:
    cpu = s.cpu if s.cpu is not None else float(os.cpu_count() or 1)
    mem = s.memory_mb if s.memory_mb is not None else int(psutil.virtual_memory().total // (1 << 20))
    return DeviceInfo(
        id=s.device_id,
        tier=s.tier,
        capacity=Capacity(cpu=cpu, memory_mb=mem, records_per_s=s.records_per_s or throughput.measured()),
        labels=s.labels,
        input_streams=s.input_streams,
        # what the agent accepts, no more: placement must not send it what it refuses
        runtimes=list(runtimes.RuntimePolicy.decide(s.device_id, s.runtimes).offered),
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


class Usage:
    """CPU and memory utilisation (percent) for heartbeats.

    ``host``: the whole machine (psutil's system-wide figures). ``agent``: this agent
    process and its children (the programs and containers its tasks run), CPU against the
    device's declared ``cpu`` cores and RSS against its declared ``memory_mb``: several
    emulated devices on one machine each report their own load.
    """

    def __init__(self, mode: str = "host", cpu: float = 1.0, memory_mb: int = 1024) -> None:
        self.mode = mode
        self.cpu = max(cpu, 1e-3)
        self.memory = max(memory_mb, 1) * (1 << 20)
        self._proc = psutil.Process() if mode == "agent" else None
        self._last: tuple[float, float] | None = None  # (wall, cpu seconds)

    def _agent_cpu_seconds(self) -> tuple[float, int]:
        assert self._proc is not None
        t = self._proc.cpu_times()
        cpu = t.user + t.system + t.children_user + t.children_system  # children reaped included
        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                ct = child.cpu_times()
                cpu += ct.user + ct.system
                rss += child.memory_info().rss
            except psutil.Error:  # ended meanwhile
                continue
        return cpu, rss

    def sample(self) -> tuple[float, float]:
        """(cpu_percent, memory_percent) since the previous sample."""
        if self._proc is None:
            return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent
        now = time.monotonic()
        cpu, rss = self._agent_cpu_seconds()
        last, self._last = self._last, (now, cpu)
        if last is None or now <= last[0]:
            cpu_pct = 0.0
        else:
            cpu_pct = max(0.0, cpu - last[1]) / ((now - last[0]) * self.cpu) * 100
        return round(cpu_pct, 2), round(rss / self.memory * 100, 2)


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
    usage: Usage | None = None,
) -> None:
    """Send a heartbeat every ``interval`` seconds until ``stop``, with the round trip to
    each broker measured every ``PROBE_EVERY`` heartbeats (``probes``: broker -> coroutine
    returning seconds), and ``every_few`` called as often (the tasks' counters and rates)."""
    usage = usage or Usage()
    usage.sample()  # prime: the first reading is meaningless
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
        try:
            cpu_pct, mem_pct = usage.sample()
        except psutil.Error as e:
            log.debug("utilisation not sampled: %s", e)
            cpu_pct, mem_pct = 0.0, 0.0
        hb = Heartbeat(
            device=device,
            boot_id=boot_id,
            ts=time.time(),
            cpu_percent=cpu_pct,
            memory_percent=mem_pct,
            tasks=briefs(),
            rtt_ms=dict(rtt_ms),
        )
        try:
            send(hb.to_bytes())
        except Exception as e:  # never let a heartbeat failure kill the agent
            log.warning("heartbeat not sent: %s", e)
        if await wait_or_stop(stop, interval):
            return
