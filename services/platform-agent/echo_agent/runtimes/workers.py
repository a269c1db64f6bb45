"""User operators (``python:pkg.mod:Class``) in a worker process of their own.

A user operator may spin, block or crash; inside the agent it would stall the agent's
event loop (heartbeats, commands, every other task) and the device would be declared
lost. So each task of a user operator gets one child process (``worker_main``) that
imports the class, validates its config and runs it; the agent keeps a proxy
(``WorkerOperator``) that forwards the operator API to it:

- **protocol** (``workers_wire``): length-prefixed JSON frames over the child's stdin and
  stdout; each request carries an id, its answer the same id. What the operator emits
  outside a call (``ctx.emit`` from a timer) comes as frames of its own, handed to the
  task's ``ctx.emit`` in order: before the answer of any call the child made after it;
- **threads, not the loop**: per worker a writer thread (requests), a reader thread
  (answers, emits) and a reaper (its exit). A call is a future the reader resolves: the
  event loop never waits for the child, nor writes to its pipe. The proxy wants batches,
  so one round trip carries a micro-batch (``BATCH_COUNT`` records or ``BATCH_SECONDS``);
- **load**: ``load()`` starts the worker and returns at once; the class is imported and
  checked, and its config validated, in the worker; ``open()`` waits for that and raises
  ``OperatorLoadError`` with the in-agent runtime's message (the import of a slow module
  stalls nothing but its task's start). ``restore()`` before ``open()`` goes with it;
- **the operator API**: ``process``/``process_batch``/``open``/``close``/``suspend`` and a
  source's ``generate`` (records in chunks; one at a time for a source with a snapshot, so
  the snapshot between two records matches them) are awaited; ``flush()`` happens in the
  worker after every call that processed records (the answer means: durable);
  ``snapshot()`` is a short synchronous round trip (only for a class that has one);
  ``stateful`` and ``close_emits`` are the class's, read in the worker;
- **environment**: ``PATH`` (``SAFE_PATH``), ``HOME``, a UTF-8 locale and a ``PYTHONPATH``
  made of the agent's import path — never the agent's environment (broker URLs,
  credentials, token files); the ``TaskContext`` it sees has no broker URLs or logins;
  no inherited descriptors but its pipes; a session (process group) of its own;
- **failure**: an exception in a user method comes back as ``WorkerError`` naming the
  operator, the method and the exception; a worker that dies (killed, out of memory,
  ``os._exit``) fails the call in hand and every later one with ``WorkerDied`` saying its
  exit code or signal; the runner fails the task with that reason;
- **end**: ``close()``/``suspend()`` end the worker (its input closed: it exits; killed
  with its process group after ``EXIT_GRACE``). A call cancelled while the worker is in it
  (the task stops while the operator spins) kills it at once. It also dies with the agent:
  parent-death signal, the end of its input, and a finalizer at the agent's exit.

``ECHO_PYTHON_WORKERS=0`` (``AgentSettings.python_workers``) runs user operators inside the
agent instead (``python_runtime``): a round trip less per batch, no isolation.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, ClassVar

from echo_shared.operators import PYTHON_PREFIX

from ..operators.base import Operator, Output, Record, TaskContext
from .python_runtime import OperatorLoadError
from .workers_wire import BadFrame, describe_exit, encode, read_frame, worker_env

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0  # seconds to import the module and build the operator
SYNC_TIMEOUT = 30.0  # seconds for snapshot() / restore() (asked while the worker is idle)
CLOSE_TIMEOUT = 60.0  # seconds for close() / suspend()
EXIT_GRACE = 5.0  # seconds a worker gets to exit once its input is closed
REAP_GRACE = 2.0  # seconds the reader gets to pass on the last answers of a dead worker
BATCH_COUNT = 256  # records per round trip at most
BATCH_SECONDS = 0.01  # seconds a batch waits for more records
GENERATE_CHUNK = 64  # records a source's worker sends at most per answer
GENERATE_LINGER = 0.02  # seconds a source's worker waits to fill a chunk

Answer = dict[str, Any]


class WorkerError(RuntimeError):
    """A user method raised in the worker (the message names the operator and method)."""


class WorkerDied(RuntimeError):
    """The worker process ended while it was needed (the message says how)."""


class Worker:
    """One worker process and its pipes: requests out, answers (by id) and emits in."""

    def __init__(self, name: str, *, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echo_agent.runtimes.worker_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env) if env is not None else worker_env(),
            close_fds=True,
            start_new_session=True,  # its own process group: killed as one
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._ids = itertools.count(1)
        self._calls: dict[int, concurrent.futures.Future[Answer]] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._emits: collections.deque[list[Record]] = collections.deque()
        self._emits_read = 0  # the reader's count
        self._emits_given = 0  # the event loop's count
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_emit: Callable[[Iterable[Record]], None] | None = None
        self.dead: str | None = None  # why, once the worker is gone
        self.stopped = False  # ended or killed on purpose
        self.exited = threading.Event()
        self._writer = self._thread(self._write, "writer", self.proc.stdin)
        self._reader = self._thread(self._read, "reader", self.proc.stdout)
        self._thread(self._reap, "reaper")

    def _thread(self, target: Callable[..., None], role: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"worker-{role}-{self.proc.pid}", daemon=True)
        t.start()
        return t

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------------ threads

    def _write(self, stdin: Any) -> None:
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except OSError:
            pass  # the worker is gone: the reaper says how
        finally:
            with contextlib.suppress(OSError):
                stdin.close()  # the end of its input: the worker exits

    def _read(self, stdout: Any) -> None:
        try:
            while (frame := read_frame(stdout)) is not None:
                if "emit" in frame:
                    self._emitted(frame["emit"])
                    continue
                frame["emits"] = self._emits_read  # emitted before this answer
                with self._lock:
                    fut = self._calls.pop(int(frame["id"]), None)
                if fut is not None:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        fut.set_result(frame)  # not if the caller gave up on it
        except (BadFrame, OSError, KeyError, TypeError, ValueError) as e:
            log.error("worker of %s: a bad answer (%s: %s); killing it", self.name, type(e).__name__, e)
            self._kill_group()

    def _reap(self) -> None:
        pid = self.proc.pid
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited; its pid stays ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what it started goes with it
        self._reader.join(REAP_GRACE)  # the answers it gave before it ended
        code = self.proc.wait()
        how = "was stopped" if self.stopped else describe_exit(code)
        dead = f"the worker process of {self.name} {how}"
        with self._lock:
            self.dead = dead
            calls, self._calls = self._calls, {}
        for fut in calls.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                fut.set_exception(WorkerDied(dead))
        self._outbox.put(None)
        self.exited.set()
        if not self.stopped:
            log.warning("%s", dead)

    def _emitted(self, records: list[Record]) -> None:
        self._emits.append(records)
        self._emits_read += 1
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the task is gone
                loop.call_soon_threadsafe(self._deliver, None)

    def _deliver(self, upto: int | None) -> None:
        """Hand emitted records to ``on_emit`` (on the event loop), the first ``upto`` or all."""
        while self._emits and (upto is None or self._emits_given < upto):
            records = self._emits.popleft()
            self._emits_given += 1
            if self.on_emit is None:
                continue
            try:
                self.on_emit(records)
            except Exception:
                log.exception("worker of %s: what it emitted could not be sent", self.name)

    # ------------------------------------------------------------------ calls

    def request(self, op: str, **args: Any) -> concurrent.futures.Future[Answer]:
        """Send a request; its answer is the future's (``WorkerDied`` if the worker ends first)."""
        fut: concurrent.futures.Future[Answer] = concurrent.futures.Future()
        with self._lock:
            if self.dead is not None:
                raise WorkerDied(self.dead)
            rid = next(self._ids)
            try:
                data = encode({"id": rid, "op": op, **args})
            except TypeError as e:
                raise WorkerError(f"{self.name}.{op}(): cannot send its input to the worker: {e}") from None
            self._calls[rid] = fut
            self._outbox.put(data)
        return fut

    def result(self, answer: Answer) -> Any:
        self._deliver(answer["emits"])  # what it emitted before it answered comes first
        if not answer["ok"]:
            raise WorkerError(answer["error"])
        return answer.get("result")

    def call(self, op: str, timeout: float = SYNC_TIMEOUT, **args: Any) -> Any:
        """A request answered while the caller waits: only for quick ones, asked while idle."""
        fut = self.request(op, **args)
        try:
            answer = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            self.kill()
            raise WorkerDied(self._silent(op, timeout)) from None
        return self.result(answer)

    def _silent(self, op: str, timeout: float | None) -> str:
        return f"the worker process of {self.name} did not answer {op}() in {timeout:g} s"

    async def answer(
        self, fut: concurrent.futures.Future[Answer], op: str, timeout: float | None = None
    ) -> Any:
        """The answer to ``fut``, awaited; if the caller is cancelled meanwhile (the task
        stops), the worker is killed: it may be spinning in the call, and nothing waits for it."""
        try:
            async with asyncio.timeout(timeout):
                answer = await asyncio.wrap_future(fut)
        except TimeoutError:
            self.kill()
            raise WorkerDied(self._silent(op, timeout)) from None
        except asyncio.CancelledError:
            self.kill()
            raise
        return self.result(answer)

    async def acall(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        return await self.answer(self.request(op, **args), op, timeout)

    # ------------------------------------------------------------------ the end

    def _kill_group(self) -> None:
        if self.proc.returncode is None:  # not reaped: the pid (and group id) is still its
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """End the worker and its process group now."""
        self.stopped = True
        self._kill_group()

    def end(self, grace: float = EXIT_GRACE) -> None:
        """Close the worker's input (it exits at its end); kill it if it has not after ``grace``."""
        self.stopped = True
        self._outbox.put(None)
        if not self.exited.wait(grace):
            self._kill_group()
            self.exited.wait(REAP_GRACE + 1.0)

    async def aend(self) -> None:
        if not self.exited.is_set():
            await asyncio.to_thread(self.end)


class WorkerOperator(Operator):
    """The agent's side of a user operator running in a worker process."""

    wants_batches: ClassVar[bool] = True  # one round trip per micro-batch
    batch_count: ClassVar[int] = BATCH_COUNT
    batch_seconds: ClassVar[float] = BATCH_SECONDS
    # a batch goes as soon as nothing more is in hand (it grows while the worker is busy):
    # waiting batch_seconds for more would cap each worker at batch_count per wait
    batch_eager: ClassVar[bool] = True

    def __init__(self, worker: Worker, name: str, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.worker = worker
        self.name = name  # python:pkg.mod:Class
        self.flags: dict[str, bool] | None = None  # the class's, once loaded
        self._loading = worker.request("load", name=name, config=config)
        self._early: list[concurrent.futures.Future[Answer]] = []  # restore() before open()
        self._ended = False
        self._final: tuple[bool, Any] | None = None  # after suspend(): (ok, state or error)

    async def loaded(self) -> dict[str, bool]:
        """The class's flags, once the worker has imported and built it."""
        if self.flags is None:
            target = self.name.removeprefix(PYTHON_PREFIX)
            try:
                async with asyncio.timeout(LOAD_TIMEOUT):
                    answer = await asyncio.wrap_future(self._loading)
            except TimeoutError:
                self.worker.kill()
                raise OperatorLoadError(f"{target} did not load in {LOAD_TIMEOUT:g} s") from None
            except asyncio.CancelledError:
                self.worker.kill()
                raise
            if not answer["ok"]:
                raise OperatorLoadError(answer["error"])
            flags = {k: bool(v) for k, v in answer["result"].items()}
            cls = type(self)
            cls.stateful, cls.close_emits = flags["stateful"], flags["close_emits"]
            self.flags = flags
        return self.flags

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.worker.loop = asyncio.get_running_loop()
        self.worker.on_emit = ctx.emit
        try:
            await self.loaded()
            for fut in self._early:
                await self.worker.answer(fut, "restore", SYNC_TIMEOUT)
            self._early.clear()
            serialisable = {
                "dataflow": ctx.dataflow,
                "task": ctx.task,
                "device": ctx.device,
                "generation": ctx.generation,
                "data_dir": str(ctx.data_dir),
            }
            await self.worker.acall("open", ctx=serialisable)
        except BaseException:
            await self._end()
            raise

    async def process(self, record: Record) -> Output:
        result: Output = await self.worker.acall("process", record=record)
        return result

    async def process_batch(self, records: list[Record]) -> Output:
        result: Output = await self.worker.acall("process_batch", records=records)
        return result

    def flush(self) -> None:
        """Nothing to do here: the worker flushes after every call that processed records."""

    def snapshot(self) -> Any:
        if self._final is not None:  # suspended: the state it ended with
            ok, value = self._final
            if not ok:
                raise WorkerError(value)
            return value
        if self.flags is not None and not self.flags["has_snapshot"]:
            return None
        return self.worker.call("snapshot")

    def restore(self, state: Any) -> None:
        if self.flags is None:  # before open(): sent now, answered (and checked) in open()
            self._early.append(self.worker.request("restore", state=state))
            return
        self.worker.call("restore", state=state)

    async def close(self) -> Output:
        if self._ended or self.worker.stopped:  # ended, or killed when a call was given up on
            await self._end()
            return None
        try:
            result: Output = await self.worker.acall("close", CLOSE_TIMEOUT)
            return result
        finally:
            await self._end()

    async def suspend(self) -> Output:
        """The class's suspend(); then its state is taken, for ``snapshot()`` after the end."""
        if self._ended or self.worker.stopped:
            await self._end()
            return None
        try:
            result: Output = await self.worker.acall("suspend", CLOSE_TIMEOUT)
            if self.flags is not None and self.flags["has_snapshot"]:
                try:
                    self._final = (True, await self.worker.acall("snapshot", SYNC_TIMEOUT))
                except WorkerError as e:
                    self._final = (False, str(e))
            else:
                self._final = (True, None)
            return result
        finally:
            await self._end()

    async def generate(self) -> AsyncIterator[Record]:
        flags = await self.loaded()
        if not flags["is_source"]:
            raise WorkerError(f"{self.name} is not a source, and no edge feeds it")
        # a source with a snapshot: one record per answer, so its state matches each one
        most, linger = (1, 0.0) if flags["has_snapshot"] else (GENERATE_CHUNK, GENERATE_LINGER)
        while True:
            chunk = await self.worker.acall("next", max=most, linger=linger)
            for record in chunk["records"]:
                yield record
            if chunk["done"]:
                return

    async def _end(self) -> None:
        self._ended = True
        await self.worker.aend()


def load(name: str, config: dict[str, Any], *, env: Mapping[str, str] | None = None) -> Operator:
    """A proxy for ``python:package.module:Class`` in a new worker process. Returns at once:
    the worker loads the class meanwhile, and ``open()`` raises what loading it raised
    (``OperatorLoadError``, with the in-agent runtime's message)."""
    target = name.removeprefix(PYTHON_PREFIX)
    worker = Worker(target, env=env)
    cls = type(f"Worker[{target}]", (WorkerOperator,), {})  # flags of its own, set once loaded
    try:
        op: WorkerOperator = cls(worker, name, config)
    except BaseException:  # a config that is no JSON
        worker.kill()
        raise
    weakref.finalize(op, worker.kill)  # dropped, or the agent exits: the worker goes too
    return op


__all__ = ["Worker", "WorkerDied", "WorkerError", "WorkerOperator", "load"]
