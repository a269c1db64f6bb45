"""The process runtime: the ``process`` operator runs an external command, any language.

The command is an argv (no shell unless it says ``["sh", "-c", ...]``) started with
asyncio in its own session; records travel as JSON lines over its stdin/stdout in one of
the three modes of the process protocol (``lines``, ``batch``, ``file``; see
``echo_agent.runtimes.stdio``). Config: ``echo_shared.catalogue.runtimes.ProcessConfig``.

On the device: ``open()`` fails, naming the path and the device, when the program (a path,
or a name looked up on ``PATH``) or ``cwd`` is missing. The program runs in ``cwd`` (default:
the task's data directory) with the agent's environment plus ``ECHO_DATAFLOW``,
``ECHO_TASK``, ``ECHO_DEVICE``, ``ECHO_DATA_DIR`` and the config's ``env``. Every program is
killed with its whole process group when its run ends, fails, times out or the task stops,
and dies with the agent (``PR_SET_PDEATHSIG`` on Linux): no orphans.
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

from echo_shared.catalogue.runtimes import ProcessConfig

from ..operators.base import Operator, TaskContext
from .stdio import LINE_LIMIT, Child, Run, substitute
from .stdio_operator import StdioOperator

_PR_SET_PDEATHSIG = 1


def available() -> str | None:
    return None


class MissingOnDevice(FileNotFoundError):
    """Something the config names does not exist on this device."""


def _death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child die with the agent (Linux), resolved up front so
    that the forked child only calls into libc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


class LocalChild(Child):
    """A local process in its own session (so its whole group can be killed)."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc, self.what = proc, what
        self.stdin, self.stdout, self.stderr = proc.stdin, proc.stdout, proc.stderr
        self._reaped = False

    def close_stdin(self) -> None:
        if not self.stdin.is_closing():
            self.stdin.close()

    async def wait(self) -> int:
        return await self.proc.wait()

    async def kill(self) -> None:
        if self._reaped:
            return
        # the group: what a shell or the program started dies with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self._reaped = True
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


class Process(StdioOperator):
    """``process``: an external command speaking the process protocol."""

    config: ProcessConfig

    def __init__(self, config: ProcessConfig) -> None:
        super().__init__(config)
        self.program = config.command[0]
        self.cwd = Path(".")
        self.env: dict[str, str] = {}
        self.pre_exec = _death_signal()

    async def prepare(self, ctx: TaskContext) -> None:
        cfg = self.config
        self.env = {
            **os.environ,
            "ECHO_DATAFLOW": ctx.dataflow,
            "ECHO_TASK": ctx.task,
            "ECHO_DEVICE": ctx.device,
            "ECHO_DATA_DIR": str(ctx.data_dir),
            **cfg.env,
        }
        if cfg.cwd is not None:
            cwd = await asyncio.to_thread(lambda: Path(cfg.cwd or ".").expanduser())
            if not await asyncio.to_thread(cwd.is_dir):
                raise MissingOnDevice(f"cwd {cwd} does not exist on device {ctx.device}")
            self.cwd = cwd
        else:
            self.cwd = ctx.data_dir
        self.program = await asyncio.to_thread(
            resolve_program, cfg.command[0], self.env.get("PATH"), ctx.device, self.cwd
        )

    async def spawn(self, run: Run) -> Child:
        argv = substitute([self.program, *self.config.command[1:]], run)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
            limit=LINE_LIMIT,
            start_new_session=True,
            preexec_fn=self.pre_exec,
        )
        return LocalChild(proc, describe(self.config.command))


class BatchProcess(Process):
    """``process`` in batch mode: the runner hands it micro-batches."""

    wants_batches = True


Process.batched = BatchProcess

OPERATORS: dict[str, type[Operator]] = {"process": Process}
