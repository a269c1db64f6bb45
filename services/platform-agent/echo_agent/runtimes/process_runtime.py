"""The process runtime: the ``process`` operator runs an external command, any language.

The command is an argv (no shell unless it says ``["sh", "-c", ...]``) started with
asyncio; records travel as JSON lines over its stdin/stdout in one of the three modes of
the process protocol (``lines``, ``batch``, ``file``; see ``echo_agent.runtimes.stdio``).
Config: ``echo_shared.catalogue.runtimes.ProcessConfig``.

A device runs no program unless it enables this runtime (``echo-agent --runtime process``;
``echo_agent.runtimes.gating``), and then confines every program
(``echo_agent.runtimes.sandbox``): it runs as an unprivileged user (``--run-as``, default
``nobody`` when the agent is root), in its own directory ``<task data dir>/work`` (its
default ``cwd``, ``HOME`` and ``ECHO_DATA_DIR``), under resource limits (the task's
``resources``: a cgroup per program with ``cpu.max`` and ``memory.max`` where the agent can
manage cgroups v2, else address space from ``resources.memory_mb`` and a watch on
``resources.cpu`` (``echo_agent.runtimes.limits``); CPU seconds, open files, no core dumps;
a limit hit is the task's reason), with ``umask``
077 and a minimal environment, never the agent's: ``PATH`` (``/usr/local/bin:/usr/bin:/bin``),
``HOME``, ``LANG``/``LC_ALL``, ``ECHO_DATAFLOW``, ``ECHO_TASK``, ``ECHO_DEVICE``,
``ECHO_DATA_DIR`` and the config's ``env``.

On the device: ``open()`` fails, naming the path and the device, when the program (a path,
or a name looked up on that ``PATH``) or ``cwd`` is missing, and naming the user when that
user may not run the program. Every program is killed with its whole process group, and
the descendants seen (when its input ended, and at the end) that left the group, when its
run ends, fails, times out or the task stops; it dies with the agent (``PR_SET_PDEATHSIG``
on Linux): no orphans. (A descendant that leaves the group after the program's input ended
and whose parent ends first is not seen: only a cgroup could follow it. It still runs as
the program's user, under its limits. In a cgroup of its own, nothing escapes: whatever is
left in it is killed.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

from echo_shared.catalogue.runtimes import Mode, ProcessConfig

from ..operators.base import Operator, TaskContext
from .limits import DEFAULT_WINDOW, CpuWatch, limit_hit
from .limits_cgroup import CgroupError, Entry, ProgramCgroup
from .sandbox import MIN_ADDRESS_SPACE_MB, Limits, Sandbox
from .stdio import LINE_LIMIT, Child, Run, substitute
from .stdio_operator import StdioOperator

_PR_SET_PDEATHSIG = 1


def available() -> str | None:
    return None


class MissingOnDevice(FileNotFoundError):
    """Something the config names does not exist on this device."""


class NotPermitted(PermissionError):
    """The program's user may not run the program."""


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, resolved up front so that the forked child only calls into libc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def pre_exec(
    limits: Limits, prctl: Callable[..., int] | None, entry: Entry | None = None
) -> Callable[[], None]:
    """What the child does between fork and exec, after it switched users: enter its cgroup
    (``entry``), die with the agent (the death signal is reset by a change of credentials,
    so it is set after) and take its resource limits."""

    def hook() -> None:
        if entry is not None:
            entry.child_side()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        limits.apply()

    return hook


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class LocalChild(Child):
    """A local process in its own session (so its whole group can be killed)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        what: str,
        *,
        cpu: float | None = None,
        cpu_window: float = DEFAULT_WINDOW,
        memory_mb: int | None = None,
        cpu_seconds: int | None = None,
        cgroup: ProgramCgroup | None = None,
    ) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc, self.what = proc, what
        self.memory_mb, self.cpu_seconds = memory_mb, cpu_seconds  # memory_mb: of address space
        self.cgroup = cgroup  # its own, if any: removed when it is killed
        # the task's resources.cpu: sustained use above it kills the program (``limits``),
        # unless its cgroup's cpu.max throttles it
        throttled = cgroup is not None and cgroup.cpu is not None
        self.watch = CpuWatch(proc.pid, cpu, self.kill, window=cpu_window) if cpu and not throttled else None
        if self.watch is not None:
            self.watch.start()
        self.stdin, self.stdout, self.stderr = proc.stdin, proc.stdout, proc.stderr
        self._reaped = False
        # descendants seen while the program lived: those that left its group (setsid) are
        # killed at the end too, even when their parent ended first
        self._seen: dict[int, psutil.Process] = {}

    def _look(self) -> None:
        if self.proc.returncode is None:
            for p in _descendants(self.proc.pid):
                self._seen.setdefault(p.pid, p)

    def close_stdin(self) -> None:
        self._look()  # the end of its input: what it started is running now
        if not self.stdin.is_closing():
            self.stdin.close()

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.cgroup is not None and not self._reaped:
            await asyncio.to_thread(self.cgroup.look)  # OOM kills, before the cgroup goes
        return code

    def limit_reason(self, code: int, stderr: str) -> str | None:
        if self.watch is not None and self.watch.exceeded:
            return self.watch.exceeded
        cg = self.cgroup
        return limit_hit(
            code,
            stderr,
            memory_mb=self.memory_mb,
            cpu_seconds_limit=self.cpu_seconds,
            cgroup_memory_mb=cg.memory_mb if cg is not None else None,
            oom_kills=cg.oom_kills if cg is not None else 0,
        )

    async def kill(self) -> None:
        if self.watch is not None and asyncio.current_task() is not self.watch.task:
            self.watch.stop()
        if self._reaped:
            return
        # its descendants (psutil checks each is still the process seen, not a reused pid),
        # then the group: what a shell or the program started dies with it
        await asyncio.to_thread(self._look)
        for p in self._seen.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self._reaped = True
        if self.cgroup is not None:  # what escaped the group too, then the cgroup itself
            await asyncio.to_thread(self.cgroup.remove)
        if not self.stdin.is_closing():
            self.stdin.close()


def describe(argv: list[str], width: int = 60) -> str:
    """``command ['python3', '-c', 'import sys...']``: argv for messages, long items cut."""
    return "command " + repr([a if len(a) <= width else a[: width - 3] + "..." for a in argv])


def resolve_program(program: str, path_env: str | None, device: str, cwd: Path) -> str:
    """The program's path on this device, or ``MissingOnDevice`` naming it and the device."""
    if os.sep in program:
        path = Path(program).expanduser()
        if not path.is_absolute():
            path = cwd / path
        if not path.exists():
            raise MissingOnDevice(f"program {path} does not exist on device {device}")
        if not os.access(path, os.X_OK) or path.is_dir():
            raise MissingOnDevice(f"program {path} is not executable on device {device}")
        return str(path)
    found = shutil.which(program, path=path_env)
    if found is None:
        raise MissingOnDevice(f"program {program!r} not found on the PATH of device {device}")
    return found


def _inside(path: Path, root: Path) -> bool:
    return path.is_relative_to(root)


def _searchable(path: Path) -> None:
    """Others may search (not list) a directory of the agent's (blocking)."""
    mode = path.stat().st_mode
    if not mode & 0o001:
        path.chmod(mode | 0o001)


class Process(StdioOperator):
    """``process``: an external command speaking the process protocol, confined."""

    config: ProcessConfig

    def __init__(self, config: ProcessConfig) -> None:
        super().__init__(config)
        self.program = config.command[0]
        self.cwd = Path(".")
        self.task_dir = Path(".")
        self.env: dict[str, str] = {}
        self.sandbox: Sandbox | None = None
        self.memory_mb: int | None = None
        self.cpu: float | None = None
        self._prctl = _prctl()

    def confine(self, sandbox: Sandbox, memory_mb: int | None, cpu: float | None = None) -> None:
        """The device's sandbox, the task's memory (MiB; None or 0: no address-space limit)
        and CPU (cores; None or 0: not watched)."""
        self.sandbox, self.memory_mb, self.cpu = sandbox, memory_mb, cpu

    async def prepare(self, ctx: TaskContext) -> None:
        cfg = self.config
        if self.sandbox is None:
            self.sandbox = Sandbox.default()
        sandbox = self.sandbox
        self.task_dir = ctx.data_dir
        work = await asyncio.to_thread(sandbox.work_dir, ctx.data_dir)
        if sandbox.switches:
            await asyncio.to_thread(_searchable, ctx.data_dir)
        self.env = sandbox.environment(
            home=work,
            echo={
                "ECHO_DATAFLOW": ctx.dataflow,
                "ECHO_TASK": ctx.task,
                "ECHO_DEVICE": ctx.device,
                "ECHO_DATA_DIR": str(work),
            },
            extra=cfg.env,
        )
        if cfg.cwd is not None:
            cwd = await asyncio.to_thread(lambda: Path(cfg.cwd or ".").expanduser())
            if not await asyncio.to_thread(cwd.is_dir):
                raise MissingOnDevice(f"cwd {cwd} does not exist on device {ctx.device}")
            self.cwd = cwd
        else:
            self.cwd = work
        self.program = await asyncio.to_thread(
            resolve_program, cfg.command[0], self.env.get("PATH"), ctx.device, self.cwd
        )

    # ------------------------------------------------------------------ file-mode runs

    def _for_program(self, path: Path | None) -> str | None:
        """A path as the program gets it: relative to its working directory when both are in
        the task's directory (they work whatever the directories above allow)."""
        if path is None:
            return None
        if _inside(self.cwd, self.task_dir) and _inside(path, self.task_dir):
            return os.path.relpath(path, self.cwd)
        return str(path)

    def _lend(self, run: Run) -> None:
        sandbox = self.sandbox
        if sandbox is None or not sandbox.switches:
            return
        for path in (run.input, run.output):
            if path is None or not _inside(path, self.task_dir):
                continue
            for d in path.parents:
                if not _inside(d, self.task_dir) or d == self.task_dir:
                    break
                _searchable(d)
        if run.input is not None and _inside(run.input, self.task_dir):
            sandbox.give(run.input)  # the agent's copy, for this task only: its to read
        if run.output is not None and _inside(run.output, self.task_dir):
            sandbox.give(run.output.parent, 0o700)  # for this run only: its to write in

    def _take_back(self, run: Run) -> None:
        if self.sandbox is not None and run.output is not None and _inside(run.output, self.task_dir):
            self.sandbox.take_back(run.output.parent)

    async def lend(self, run: Run) -> None:
        await asyncio.to_thread(self._lend, run)

    async def take_back(self, run: Run) -> None:
        await asyncio.to_thread(self._take_back, run)

    # ------------------------------------------------------------------ starting a program

    async def spawn(self, run: Run) -> Child:
        sandbox = self.sandbox or Sandbox.default()
        argv = substitute(
            [self.program, *self.config.command[1:]],
            run,
            input_as=self._for_program(run.input),
            output_as=self._for_program(run.output),
        )
        cgroup = entry = None
        if sandbox.cgroups is not None and (self.cpu or self.memory_mb):
            name = f"{self.ctx.dataflow}-{self.ctx.task}"
            make = sandbox.cgroups.make
            cgroup = await asyncio.to_thread(make, name, cpu=self.cpu, memory_mb=self.memory_mb)
            entry = Entry(cgroup)
        in_cgroup = cgroup is not None and cgroup.memory_mb is not None
        lines = self.config.mode is Mode.lines
        limits = sandbox.limits(memory_mb=self.memory_mb, lines=lines, address_space=not in_cgroup)
        try:
            if entry is not None:
                entry.start()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                limit=LINE_LIMIT,
                start_new_session=True,
                preexec_fn=pre_exec(limits, self._prctl, entry),
                umask=0o077,
                **sandbox.popen_args(),  # type: ignore[arg-type]
            )
        except BaseException as e:
            if entry is not None:
                entry.finish()
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            if entry is not None and entry.error is not None:
                where = cgroup.path if cgroup is not None else "?"
                raise CgroupError(f"cannot move the program into cgroup {where}: {entry.error}") from e
            if isinstance(e, PermissionError):
                why = await asyncio.to_thread(sandbox.why_not_executable, self.program)
                raise NotPermitted(
                    f"user {sandbox.user} may not run {self.program} on device {self.ctx.device}"
                    + (f": {why}" if why else f" ({e.strerror})")
                ) from e
            raise
        if entry is not None:
            entry.finish()
        cpu_seconds = sandbox.lines_cpu_seconds if lines else sandbox.cpu_seconds
        address_mb = max(self.memory_mb, MIN_ADDRESS_SPACE_MB) if self.memory_mb and not in_cgroup else None
        return LocalChild(
            proc,
            describe(self.config.command),
            cpu=self.cpu,
            cpu_window=sandbox.cpu_window,
            memory_mb=address_mb,
            cpu_seconds=cpu_seconds or None,
            cgroup=cgroup,
        )


class BatchProcess(Process):
    """``process`` in batch mode: the runner hands it micro-batches."""

    wants_batches = True


Process.batched = BatchProcess

OPERATORS: dict[str, type[Operator]] = {"process": Process}
