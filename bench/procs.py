"""What the platform's processes spend while a benchmark runs: peak RSS and CPU time (psutil).

``ProcSampler`` samples each process's resident memory on a thread (every ``every``
seconds) and reads its CPU time (user + system) at entry and exit, so a figure can say
which process was busy (the bottleneck on a 2-core machine) and whether memory stayed flat.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from common import Stack

MIB = 1 << 20


def platform_pids(
    stack: Stack,
    *,
    agents: tuple[str, ...] | None = None,
    broker: bool = True,
    services: tuple[str, ...] = (),
) -> dict[str, int]:
    """Pids by name: ``agent-<device>`` (all agents, or ``agents``), ``mosquitto``, services."""
    out = {f"agent-{d}": p.pid for d, p in stack.platform.agents.items() if agents is None or d in agents}
    if broker and "mosquitto" in stack.brokers.processes:
        out["mosquitto"] = stack.brokers.processes["mosquitto"].pid
    for name in services:
        if name in stack.platform.services:
            out[name] = stack.platform.services[name].pid
    return out


class ProcSampler:
    def __init__(self, pids: dict[str, int], every: float = 0.02) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.every = every
        self.before = {name: self._rss(p) for name, p in self.procs.items()}
        self.peak = dict(self.before)
        self.cpu0 = {name: self._cpu(p) for name, p in self.procs.items()}
        self.cpu1 = dict(self.cpu0)
        self.samples = 0
        self.t0 = self.t1 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    @staticmethod
    def _rss(p: psutil.Process) -> int:
        try:
            return int(p.memory_info().rss)
        except psutil.Error:
            return 0

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples += 1
            for name, p in self.procs.items():
                self.peak[name] = max(self.peak[name], self._rss(p))

    def __enter__(self) -> ProcSampler:
        self.t0 = time.perf_counter()
        self.cpu0 = {name: self._cpu(p) for name, p in self.procs.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.t1 = time.perf_counter()
        self.cpu1 = {name: self._cpu(p) for name, p in self.procs.items()}

    def growth_mb(self, name: str) -> float:
        return round((self.peak[name] - self.before[name]) / MIB, 1)

    def figures(self) -> dict[str, Any]:
        wall = max(self.t1 - self.t0, 1e-9)
        return {
            name: {
                "rss_before_mb": round(self.before[name] / MIB, 1),
                "rss_peak_mb": round(self.peak[name] / MIB, 1),
                "rss_growth_mb": self.growth_mb(name),
                "cpu_s": round(self.cpu1[name] - self.cpu0[name], 2),
                "cpu_pct": round(100.0 * (self.cpu1[name] - self.cpu0[name]) / wall, 1),
            }
            for name in self.procs
        }
