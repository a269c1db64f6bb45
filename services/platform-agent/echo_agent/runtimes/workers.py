"""User operators (``python:pkg.mod:Class``) in a worker process of their own.

A user operator may spin, block or crash; inside the agent it would stall the agent's
event loop (heartbeats, commands, every other task) and the device would be declared
lost. So each task of a user operator gets one child process (``worker_main``) that
imports the class, validates its config and runs it; the agent keeps a proxy
(``WorkerOperator``) that forwards the operator API to it:

- **protocol**: length-prefixed (4-byte big-endian) orjson frames over the child's stdin
  and stdout. Each request carries an id; its answer carries the same id. Records an
  operator emits outside a call (``ctx.emit`` from a timer) arrive as their own frames at
  any time and go to the task's ``ctx.emit``;
- **threads**: one reader thread per worker files answers by id and hands emitted
  records to the event loop; an async call (``open``, ``process``, ``process_batch``,
  ``close``, ``suspend``, the source's next records) waits on its answer in a thread of
  its own, so the loop never waits for user code. ``snapshot``/``restore`` are
  synchronous in the operator API: they are asked between two calls, when the worker is
  idle, and answered at once;
- **environment**: the child gets ``PATH`` (``SAFE_PATH``), ``HOME``, ``LANG``, and a
  ``PYTHONPATH`` made of the agent's own import path (so the module imports as it would
  in the agent) — never the agent's environment (broker URLs, credentials, token files);
  no inherited descriptors but its pipes; its own session; it dies with the agent
  (parent-death signal);
- **failure**: an exception in a user method comes back as ``WorkerError`` naming the
  operator, the method and the exception; a worker that dies (killed, out of memory,
  ``os._exit``) fails the call in hand and every later one with ``WorkerDied`` saying
  its exit code or signal; the task fails with that reason;
- **end**: ``close()`` and ``suspend()`` end the process (asked to exit, killed with its
  process group after ``EXIT_GRACE`` seconds).

``ECHO_PYTHON_WORKERS=0`` runs user operators inside the agent instead (faster per
record, no isolation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import orjson

from ..operators.base import Operator, Output, Record, TaskContext
from .python_runtime import OperatorLoadError
from .sandbox import minimal_environment

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
LOAD_TIMEOUT = 60.0  # seconds to import the module and build the operator
SYNC_TIMEOUT = 60.0  # seconds for snapshot() / restore() (asked while the worker is idle)
EXIT_GRACE = 5.0  # seconds a worker gets to finish close() and exit before it is killed
GENERATE_CHUNK = 64  # records a source's worker sends at most per answer
GENERATE_LINGER = 0.02  # seconds a source's worker waits to fill a chunk


class WorkerError(RuntimeError):
    """A user method raised in the worker (the message names the operator and method)."""


class WorkerDied(RuntimeError):
    """The worker process ended while it was needed."""


def write_frame(out: IO[bytes], obj: Any) -> None:
    data = orjson.dumps(obj)
    out.write(FRAME.pack(len(data)) + data)
    out.flush()


def read_frame(inp: IO[bytes]) -> Any | None:
    """The next frame, or None at the end of the stream."""
    head = inp.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (n,) = FRAME.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    data = inp.read(n)
    if len(data) < n:
        return None
    return orjson.loads(data)


def worker_env() -> dict[str, str]:
    """What a worker inherits: no broker URL, login or token of the agent's."""
    path = [p for p in sys.path if p and Path(p).is_dir()]
    if "" in sys.path:
        path.insert(0, os.getcwd())
    return {
        **minimal_environment(os.environ.get("HOME", "/")),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
        "PYTHONUNBUFFERED": "1",
    }


def describe_exit(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Worker:
    """One worker process and its pipes: requests out, answers (by id) and emits in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echo_agent.runtimes.worker_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_env(),
            close_fds=True,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = self.proc.stdout
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._write = threading.Lock()
        self.dead: str | None = None  # why, once the worker is gone
        self.on_emit: Callable[[list[Record]], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # async calls wait in a thread of their own: never the event loop's
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"worker-{name}")
        self._reader = threading.Thread(target=self._read, name=f"worker-reader-{name}", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ the pipes

    def _read(self) -> None:
        why = ""
        try:
            while True:
                frame = read_frame(self._out)
                if frame is None:
                    break
                if "emit" in frame:
                    self._emitted(frame["emit"])
                    continue
                with self._cond:
                    self._answers[int(frame["id"])] = frame
                    self._cond.notify_all()
        except Exception as e:  # a broken frame: the worker cannot be trusted any more
            why = f" (bad answer: {type(e).__name__}: {e})"
            with contextlib.suppress(Exception):
                self.proc.kill()
        code = self.proc.wait()
        with self._cond:
            self.dead = f"the worker process of {self.name} {describe_exit(code)}{why}"
            self._cond.notify_all()

    def _emitted(self, records: list[Record]) -> None:
        if self.on_emit is None or self.loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the task is gone
            self.loop.call_soon_threadsafe(self.on_emit, records)

    def send(self, op: str, **args: Any) -> int:
        rid = next(self._ids)
        if self.dead is not None:
            raise WorkerDied(self.dead)
        try:
            with self._write:
                write_frame(self._in, {"id": rid, "op": op, **args})
        except (BrokenPipeError, ValueError, OSError) as e:
            self.proc.poll()
            raise WorkerDied(self.dead or f"the worker process of {self.name} is gone ({e})") from e
        return rid

    def wait(self, rid: int, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._answers or self.dead is not None, timeout):
                raise WorkerDied(f"the worker process of {self.name} did not answer within {timeout:g} s")
            answer = self._answers.pop(rid, None)
        if answer is None:
            raise WorkerDied(self.dead or f"the worker process of {self.name} is gone")
        if not answer["ok"]:
            raise WorkerError(answer["error"])
        return answer.get("result")

    def call(self, op: str, timeout: float | None = SYNC_TIMEOUT, **args: Any) -> Any:
        """A request answered while the caller waits (the worker is idle: it is quick)."""
        return self.wait(self.send(op, **args), timeout)

    async def acall(self, op: str, **args: Any) -> Any:
        """A request whose answer is waited for off the event loop."""
        rid = self.send(op, **args)
        return await asyncio.get_running_loop().run_in_executor(self._waiter, self.wait, rid, None)

    def end(self) -> None:
        """Ask the worker to exit; kill its process group if it has not after ``EXIT_GRACE``."""
        with contextlib.suppress(Exception):
            self.send("exit")
        with contextlib.suppress(Exception):
            self._in.close()
        try:
            self.proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._waiter.shutdown(wait=False, cancel_futures=True)

    async def aend(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.end)


class WorkerOperator(Operator):
    """The agent's side of a user operator running in a worker process."""

    worker: Worker
    name: str
    is_source: bool = False

    def __init__(self, config: Any) -> None:
        super().__init__(config)

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.worker.loop = asyncio.get_running_loop()
        self.worker.on_emit = ctx.emit
        await self.worker.acall(
            "open",
            ctx={
                "dataflow": ctx.dataflow,
                "task": ctx.task,
                "device": ctx.device,
                "generation": ctx.generation,
                "data_dir": str(ctx.data_dir),
            },
        )

    async def process(self, record: Record) -> Output:
        result: Output = await self.worker.acall("process", record=record)
        return result

    async def process_batch(self, records: list[Record]) -> Output:
        result: Output = await self.worker.acall("process_batch", records=records)
        return result

    def flush(self) -> None:
        self.worker.call("flush")

    def snapshot(self) -> Any:
        return self.worker.call("snapshot")

    def restore(self, state: Any) -> None:
        self.worker.call("restore", state=state)

    async def close(self) -> Output:
        try:
            result: Output = await self.worker.acall("close")
            return result
        finally:
            await self.worker.aend()

    async def suspend(self) -> Output:
        try:
            result: Output = await self.worker.acall("suspend")
            return result
        finally:
            await self.worker.aend()

    async def generate(self) -> AsyncIterator[Record]:
        if not self.is_source:
            raise WorkerError(f"{self.name} is not a source (it has no generate())")
        while True:
            chunk = await self.worker.acall("next", max=GENERATE_CHUNK, linger=GENERATE_LINGER)
            for record in chunk["records"]:
                yield record
            if chunk["done"]:
                return


def load(name: str, config: dict[str, Any]) -> Operator:
    """Start a worker for ``python:package.module:Class`` and load the class there; its load
    errors are the in-agent runtime's (``OperatorLoadError``, pydantic's for a bad config)."""
    worker = Worker(name.removeprefix("python:"))
    try:
        flags = worker.call("load", timeout=LOAD_TIMEOUT, name=name, config=config)
    except WorkerError as e:
        worker.end()
        raise OperatorLoadError(str(e).removeprefix("OperatorLoadError: ")) from None
    except WorkerDied:
        worker.end()
        raise
    cls = type(
        f"Worker[{worker.name}]",
        (WorkerOperator,),
        {
            "stateful": bool(flags["stateful"]),
            "close_emits": bool(flags["close_emits"]),
            "wants_batches": bool(flags["wants_batches"]),
            "is_source": bool(flags["is_source"]),
            "worker": worker,
            "name": worker.name,
        },
    )
    op: WorkerOperator = cls(config)
    return op


__all__ = ["WorkerDied", "WorkerError", "WorkerOperator", "load", "read_frame", "write_frame"]
