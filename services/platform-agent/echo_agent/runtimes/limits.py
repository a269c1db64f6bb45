"""A task's resources enforced on the programs it runs (``process`` runtime), and limits that
were hit named as the reason the task failed.

Where the agent can manage cgroups v2 (``limits_cgroup``: the unified hierarchy at
``/sys/fs/cgroup`` with the ``cpu`` and ``memory`` controllers delegated to it), each program
runs in a cgroup of its own: ``cpu.max`` throttles it to ``resources.cpu`` and ``memory.max``
is ``resources.memory_mb``; a program the kernel OOM-kills there (``memory.events``) fails
the task with ``memory limit exceeded: 64 MiB (resources.memory_mb)``. Elsewhere (cgroups v1,
no delegation) this module's rlimits and watch do it:

- **CPU** (``resources.cpu``, in cores): ``CpuWatch`` samples the CPU time of the program
  and everything it started, every ``SAMPLE_EVERY`` seconds; when the average over the last
  ``window`` seconds (``ECHO_PROCESS_CPU_WINDOW``, 10 s) exceeds the limit by more than
  ``TOLERANCE`` (50 %, plus ``SLACK`` cores for start-up), the program is killed and the
  task fails with ``cpu limit exceeded: 0.98 cores over 10 s, limit 0.25 (resources.cpu)``.
  A burst shorter than the window is allowed: the limit is on sustained use, the share the
  scheduler reserved for the task (``cpu.max`` throttles instead of killing).
- **Memory** (``resources.memory_mb``): the address-space limit set by ``sandbox`` (at
  least ``MIN_ADDRESS_SPACE_MB``); a program that exits non-zero after an allocation failed
  (``MemoryError``, ``Cannot allocate memory``, ``bad_alloc``, ``out of memory`` in its
  stderr) fails the task with ``memory limit exceeded: 256 MiB of address space (from
  resources.memory_mb)``; one killed by ``SIGKILL``, ``SIGSEGV``, ``SIGBUS`` or ``SIGABRT``
  (what a failed allocation may end in) with ``exited with signal SIGSEGV (memory limit
  256 MiB of address space may have been exceeded)``: the signal cannot say more.

In both: a program killed by ``SIGXCPU`` used up its CPU seconds (``RLIMIT_CPU``,
``ECHO_PROCESS_CPU_SECONDS``): ``cpu time limit exceeded: 600 CPU seconds
(ECHO_PROCESS_CPU_SECONDS)``; any other signal is named (``exited with signal SIGTERM``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import psutil

from .stdio import signal_name

log = logging.getLogger(__name__)

SAMPLE_EVERY = 1.0  # seconds between two looks at a program's CPU time
DEFAULT_WINDOW = 10.0  # seconds the average CPU use is taken over
TOLERANCE = 1.5  # the average may reach this many times the limit ...
SLACK = 0.05  # ... plus this many cores (an interpreter starting up)
OUT_OF_MEMORY = ("memoryerror", "cannot allocate memory", "bad_alloc", "out of memory")


def cpu_seconds(root: psutil.Process) -> float:
    """CPU time (user + system) of ``root``, the children it reaped and every live descendant."""
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = [root]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuWatch:
    """Kills a program whose sustained CPU use exceeds its task's ``resources.cpu``."""

    def __init__(
        self,
        pid: int,
        cores: float,
        kill: Callable[[], Awaitable[None]],
        *,
        window: float = DEFAULT_WINDOW,
        every: float = SAMPLE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores = cores
        self.window = window
        self.every = every
        self.clock = clock
        self._kill = kill
        self.exceeded: str | None = None
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        try:
            self._proc: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._proc = None
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def allowed(self) -> float:
        return self.cores * TOLERANCE + SLACK

    def start(self) -> None:
        if self.cores > 0 and self._proc is not None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def sample(self, now: float, used: float) -> str | None:
        """Record one look; the reason to kill when the average over the window is too high."""
        self._samples.append((now, used))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        t0, u0 = self._samples[0]
        span = now - t0
        if span < self.window:
            return None
        rate = (used - u0) / span
        if rate <= self.allowed:
            return None
        return f"cpu limit exceeded: {rate:.2f} cores over {span:.0f} s, limit {self.cores:g} (resources.cpu)"

    async def _run(self) -> None:
        assert self._proc is not None
        proc = self._proc
        while True:
            used = await asyncio.to_thread(cpu_seconds, proc)
            why = self.sample(self.clock(), used)
            if why is not None:
                self.exceeded = why
                log.warning("%s: %s", proc.pid, why)
                await self._kill()
                return
            await asyncio.sleep(self.every)


MEMORY_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT)


def limit_hit(
    code: int,
    stderr: str,
    *,
    memory_mb: int | None,
    cpu_seconds_limit: int | None,
    cgroup_memory_mb: int | None = None,
    oom_kills: int = 0,
) -> str | None:
    """What limit an exit shows was hit (None: nothing says one was). ``memory_mb``: the
    address-space limit (rlimits); ``cgroup_memory_mb``: the cgroup's ``memory.max``, and
    ``oom_kills`` the kernel's count of OOM kills in it."""
    if cgroup_memory_mb and oom_kills:
        return f"memory limit exceeded: {cgroup_memory_mb} MiB (resources.memory_mb)"
    if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU) and cpu_seconds_limit:
        unit = "second" if cpu_seconds_limit == 1 else "seconds"
        return f"cpu time limit exceeded: {cpu_seconds_limit} CPU {unit} (ECHO_PROCESS_CPU_SECONDS)"
    if memory_mb and code != 0 and any(s in stderr.lower() for s in OUT_OF_MEMORY):
        return f"memory limit exceeded: {memory_mb} MiB of address space (from resources.memory_mb)"
    if memory_mb and not cgroup_memory_mb and code in [-s for s in MEMORY_SIGNALS]:
        return (
            f"exited with signal {signal_name(-code)} "
            f"(memory limit {memory_mb} MiB of address space may have been exceeded)"
        )
    return None


__all__ = ["MEMORY_SIGNALS", "CpuWatch", "cpu_seconds", "limit_hit"]
