"""A task's resources enforced by cgroups v2, where the agent may manage them (``process``).

``CgroupTree.detect`` (once, at start) decides whether this device can: the unified
hierarchy mounted at ``/sys/fs/cgroup`` (its ``cgroup.controllers`` file), the ``cpu`` and
``memory`` controllers available to the agent's own cgroup (``/proc/self/cgroup``: ``0::/…``),
and the agent able to make child cgroups with them. cgroups v2 lets a cgroup with
controllers enabled for its children hold no process itself, so the agent (with what it
started) moves into a leaf ``agent`` below its cgroup first, when that cgroup is its own:
one holding a process that is not the agent's is left alone. A systemd unit with
``Delegate=yes``, or a container with its own cgroup namespace whose first process is the
agent, is such a place. Anything short of that (cgroups v1, no delegation, no permission) and the programs
get rlimits and the CPU watch of ``limits`` instead; the agent logs which, once.

Each program (a batch or file run, or a lines-mode task's one program) gets a cgroup of its
own below that, ``echo-<dataflow>-<task>-<8 hex>``:

- ``cpu.max`` = ``resources.cpu`` x ``PERIOD_US`` per ``PERIOD_US``: the kernel throttles
  the program (and everything it starts) to its share, it is not killed;
- ``memory.max`` = ``resources.memory_mb`` MiB, ``memory.swap.max`` 0 (where swap is
  accounted) and ``memory.oom.group`` 1: a program that needs more is OOM-killed as a
  whole, which ``memory.events`` counts (``oom_kill``); the task then fails with ``memory
  limit exceeded: 64 MiB (resources.memory_mb)``;
- the program enters it between fork and exec (``Entry``): it never runs, nor starts
  anything, outside it; at the end whatever is left in it is killed (``cgroup.kill``, or
  each process of ``cgroup.procs``) and the cgroup is removed.

Everything takes the hierarchy's root as a path, so it works on a directory laid out like
one (tests).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # cpu.max's period
MIN_QUOTA_US = 1_000  # the kernel's smallest quota
NEEDED = ("cpu", "memory")
AGENT_LEAF = "agent"  # where the agent (and whoever shared its cgroup) moves to
REMOVE_WITHIN = 2.0  # seconds for the killed processes of a cgroup to be gone


class CgroupError(OSError):
    """A program's cgroup could not be made, entered or removed."""


def read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def write(path: Path, value: str) -> None:
    """One ``write()``, as cgroup interface files want it."""
    with open(path, "w") as f:
        f.write(value)


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The unified hierarchy's line of ``/proc/self/cgroup`` (``0::/path``), or None."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _mine(pid: int) -> bool:
    """The agent itself or a process it started."""
    if pid == os.getpid():
        return True
    try:
        return any(p.pid == os.getpid() for p in psutil.Process(pid).parents())
    except psutil.Error:
        return True  # gone: nothing to move


def cpu_max(cores: float) -> str:
    """``cpu.max`` for ``cores``: quota and period in microseconds."""
    quota = max(MIN_QUOTA_US, round(cores * PERIOD_US))
    return f"{quota} {PERIOD_US}"


@dataclass(frozen=True)
class CgroupTree:
    """The cgroup below which the agent makes one per program."""

    base: Path

    @classmethod
    def detect(
        cls, root: Path = CGROUP_ROOT, own: str | None = None, mine: Callable[[int], bool] | None = None
    ) -> tuple[CgroupTree | None, str]:
        """The tree, or None and why not. ``own``: the agent's cgroup (default: from
        ``/proc/self/cgroup``); ``mine``: whether a pid is the agent or one of its descendants.
        May move the agent into ``base/agent`` (see the module doc)."""
        if not (root / "cgroup.controllers").is_file():
            return None, f"no cgroup v2 hierarchy at {root}"
        if own is None:
            try:
                own = own_cgroup(read(Path("/proc/self/cgroup")))
            except OSError as e:
                return None, f"cannot read /proc/self/cgroup: {e}"
            if own is None:
                return None, "the agent is in no cgroup v2 (/proc/self/cgroup)"
        base = root / own.lstrip("/")
        try:
            available = read(base / "cgroup.controllers").split()
            missing = [c for c in NEEDED if c not in available]
            if missing:
                return None, f"controllers {', '.join(NEEDED)} not all available in {base}"
            cls._enable(base, mine or _mine)
            tree = cls(base)
            probe = tree.make("probe", cpu=1.0, memory_mb=64)
            probe.remove()
        except OSError as e:
            return None, f"cannot manage cgroups under {base}: {e}"
        return tree, ""

    @staticmethod
    def _enable(base: Path, mine: Callable[[int], bool]) -> None:
        enabled = read(base / "cgroup.subtree_control").split()
        if all(c in enabled for c in NEEDED):
            return
        change = " ".join(f"+{c}" for c in NEEDED)
        try:
            write(base / "cgroup.subtree_control", change)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        # processes in ``base`` itself: the agent's move to a leaf first (no internal processes)
        pids = [int(p) for p in read(base / "cgroup.procs").split()]
        others = [p for p in pids if not mine(p)]
        if others:
            raise CgroupError(
                f"its cgroup holds processes that are not the agent's ({', '.join(map(str, others[:5]))}): "
                "give it a cgroup of its own (a systemd unit with Delegate=yes)"
            )
        leaf = base / AGENT_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                write(leaf / "cgroup.procs", str(pid))
        write(base / "cgroup.subtree_control", change)

    def make(self, name: str, *, cpu: float | None, memory_mb: int | None) -> ProgramCgroup:
        """A fresh cgroup for one program, with its limits (None or 0: none). Blocking."""
        path = self.base / f"echo-{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        group = ProgramCgroup(path, cpu or None, memory_mb or None)
        try:
            if cpu:
                write(path / "cpu.max", cpu_max(cpu))
            if memory_mb:
                write(path / "memory.max", str(memory_mb * 1024 * 1024))
                for name_, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    if (path / name_).exists():  # without swap accounting there is none
                        write(path / name_, value)
        except OSError:
            group.remove()
            raise
        return group


@dataclass
class ProgramCgroup:
    """One program's cgroup."""

    path: Path
    cpu: float | None
    memory_mb: int | None
    oom_kills: int = 0  # seen so far (``memory.events``), kept once the cgroup is gone

    def enter(self, pid: int) -> None:
        write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in read(self.path / "cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def look(self) -> int:
        """How many processes the kernel OOM-killed in it (``memory.events``)."""
        with contextlib.suppress(OSError, ValueError):
            for line in read(self.path / "memory.events").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    self.oom_kills = max(self.oom_kills, int(value))
        return self.oom_kills

    def kill(self) -> None:
        """Kill whatever is left in it. Blocking."""
        if (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                write(self.path / "cgroup.kill", "1")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Kill what is left and remove it (idempotent). Blocking: a poll with a deadline
        while the killed processes go."""
        if not self.path.exists():
            return
        self.look()
        self.kill()
        deadline = time.monotonic() + REMOVE_WITHIN
        while True:
            try:
                self._rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s: %s", self.path, e)
                    return
                self.kill()
                time.sleep(0.02)

    def _rmdir(self) -> None:
        os.rmdir(self.path)


class Entry:
    """Moves a forked program into its cgroup before it execs.

    The child (in its pre-exec hook, after it switched users) writes its pid to a pipe and
    waits; a thread of the agent's (the event loop is blocked in ``fork``/``exec`` meanwhile)
    writes that pid to ``cgroup.procs``, which needs the agent's rights, and answers: ``1``
    and the child goes on to exec, ``0`` and it fails (``Popen`` raises). Use: ``start()``,
    spawn with ``child_side`` in the pre-exec hook, then ``finish()``."""

    def __init__(self, group: ProgramCgroup) -> None:
        self.group = group
        self.error: OSError | None = None
        self._pid_r, self._pid_w = os.pipe()
        self._go_r, self._go_w = os.pipe()
        self._thread = threading.Thread(target=self._agent_side, name="cgroup-entry", daemon=True)
        self._started = False

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def child_side(self) -> None:
        """In the child between fork and exec: only system calls. It drops its copies of the
        agent's ends first, so that an agent side that ended without answering is an EOF."""
        os.close(self._go_w)
        os.close(self._pid_r)
        os.write(self._pid_w, b"%d\n" % os.getpid())
        if os.read(self._go_r, 1) != b"1":
            raise CgroupError("could not enter its cgroup")

    def _agent_side(self) -> None:
        try:
            data = b""
            while not data.endswith(b"\n"):
                chunk = os.read(self._pid_r, 32)
                if not chunk:  # the child went before its hook ran: nothing to move
                    return
                data += chunk
            try:
                self.group.enter(int(data))
            except (OSError, ValueError) as e:
                self.error = e if isinstance(e, OSError) else CgroupError(f"not a pid: {e}")
                os.write(self._go_w, b"0")
            else:
                os.write(self._go_w, b"1")
        finally:
            os.close(self._pid_r)
            os.close(self._go_w)

    def finish(self) -> None:
        """After the spawn (done or failed): the parent's pipe ends closed, the thread ended."""
        mine = [self._pid_w, self._go_r]
        if not self._started:
            mine += [self._pid_r, self._go_w]
        for fd in mine:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._started:
            self._thread.join(timeout=5.0)


__all__ = ["CGROUP_ROOT", "CgroupError", "CgroupTree", "Entry", "ProgramCgroup", "cpu_max", "own_cgroup"]
