"""A worker process: runs one operator for the agent (``workers`` is the agent's side): a user
operator, or a built-in whose task asked for a worker (``resources.worker``).

Reads requests from stdin, answers on stdout (length-prefixed JSON frames, see
``workers_wire``); what the operator prints goes to stderr (the agent's log), never into
the protocol. Its event loop runs between requests, so an operator's timers fire and what
they emit (``ctx.emit``) is sent at once. It ends at the end of its input (the agent closed
it, or is gone) even while the operator spins, and dies with the agent (parent-death
signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from echo_shared.operators import PYTHON_PREFIX, lookup

from ..operators.base import Operator, Record, TaskContext
from . import python_runtime
from .workers_wire import encode, read_frame

PR_SET_PDEATHSIG = 1
NICENESS = 5  # below the agent: an operator spinning on every core leaves its loop the CPU
EXIT_GRACE = 3.0  # seconds to end normally once the input ended (the agent kills after 5)


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before we asked
        os._exit(1)


def builtin(name: str, config: Any) -> Operator:
    """A built-in operator that can run in a worker (the catalogue says which)."""
    from ..operators import UnknownOperator, build

    info = lookup(name)
    if info is None or not info.can_run_in_worker:
        raise UnknownOperator(f"{name!r} cannot run in a worker process")
    return build(name, config)


async def value(result: Any) -> Any:
    if inspect.isawaitable(result):
        result = await result
    return result


def records(result: Any) -> list[Record]:
    return [] if result is None else list(result)


def overrides(cls: type, method: str) -> bool:
    """Whether the class has ``method`` of its own (not the operator API's default, if any)."""
    mine = getattr(cls, method, None)
    return callable(mine) and mine is not getattr(Operator, method, None)


class Host:
    """The operator and the requests it answers."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.op: Any = None  # the user's class need not subclass Operator (duck-typed)
        self.name = ""
        self.flush = False  # the class has a flush() of its own: called after each call
        self.batches = False  # the class has a process_batch() of its own
        self.source: AsyncIterator[Record] | None = None
        self.pending: asyncio.Future[Record] | None = None  # a source's next record, asked for
        self.method = ""  # the user's method in hand (named when it raises)
        self.lock = threading.Lock()  # an operator may emit from a thread of its own

    def emit(self, recs: Any) -> None:
        self.send(encode({"emit": records(recs)}))

    def send(self, data: bytes) -> None:
        with self.lock:
            self.out.write(data)
            self.out.flush()

    def load(self, name: str, config: Any) -> dict[str, bool]:
        self.name = name.removeprefix(PYTHON_PREFIX)
        self.op = (
            python_runtime.load(name, config) if name.startswith(PYTHON_PREFIX) else builtin(name, config)
        )
        cls = type(self.op)
        self.flush, self.batches = overrides(cls, "flush"), overrides(cls, "process_batch")
        return {
            "stateful": bool(getattr(cls, "stateful", False)),
            "close_emits": bool(getattr(cls, "close_emits", False)),
            "wants_batches": bool(getattr(cls, "wants_batches", False)),
            "is_source": callable(getattr(self.op, "generate", None)),
            "has_snapshot": overrides(cls, "snapshot"),
        }

    async def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        self.method = "generate" if op == "next" else op
        if op == "load":
            return self.load(str(req["name"]), req["config"])
        if self.op is None:
            raise RuntimeError("no operator loaded")
        user = self.op
        if op == "open":
            c = req["ctx"]
            ctx = TaskContext(
                c["dataflow"],
                c["task"],
                c["device"],
                int(c["generation"]),
                Path(c["data_dir"]),
                logging.getLogger(f"echo.task.{c['task']}"),
                emit=self.emit,
            )
            await value(user.open(ctx))
            return None
        if op == "process":
            out = records(await value(user.process(req["record"])))
            await self.flushed()
            return out
        if op == "process_batch":
            out = await self.batch(req["records"])
            await self.flushed()
            return out
        if op == "snapshot":
            return await value(user.snapshot()) if callable(getattr(user, "snapshot", None)) else None
        if op == "restore":
            if callable(getattr(user, "restore", None)):
                await value(user.restore(req["state"]))
            return None
        if op == "close":
            return records(await value(user.close()))
        if op == "suspend":
            if callable(getattr(user, "suspend", None)):
                return records(await value(user.suspend()))
            if getattr(type(user), "close_emits", False):
                return []
            return records(await value(user.close()))
        if op == "next":
            return await self.next(int(req["max"]), float(req["linger"]))
        raise ValueError(f"unknown request {op!r}")

    async def batch(self, recs: list[Record]) -> list[Record]:
        if self.batches:
            return records(await value(self.op.process_batch(recs)))
        out: list[Record] = []
        self.method = "process"
        for r in recs:  # process() per record, as the agent would call it
            out.extend(records(await value(self.op.process(r))))
        return out

    async def flushed(self) -> None:
        """What was processed is durable before the agent hears of it (and acknowledges its input)."""
        if self.flush:
            self.method = "flush"
            await value(self.op.flush())

    async def next(self, most: int, linger: float) -> dict[str, Any]:
        """Up to ``most`` records of the source, as soon as one is there (``linger`` more
        seconds to gather others)."""
        if self.source is None:
            self.source = self.op.generate()
        assert self.source is not None
        out: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while len(out) < most:
            if self.pending is None:
                self.pending = asyncio.ensure_future(self.source.__anext__())
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({self.pending}, timeout=timeout)
            if not done:
                break  # the rest comes with the next request (the generator goes on meanwhile)
            fut, self.pending = self.pending, None
            try:
                out.append(fut.result())
            except StopAsyncIteration:
                return {"records": out, "done": True}
            if deadline is None:
                deadline = loop.time() + linger
        return {"records": out, "done": False}

    def failed(self, req: dict[str, Any], e: BaseException) -> str:
        op = str(req.get("op"))
        detail = f"{type(e).__name__}: {e}"
        if op == "load":  # the in-agent runtime's message (the class's own errors: with their type)
            return str(e) if isinstance(e, python_runtime.OperatorLoadError | ValidationError) else detail
        traceback.print_exception(e, file=sys.stderr)
        return f"{self.name}.{self.method}() raised {detail}"


async def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read() -> None:  # blocking reads in a thread: the loop stays free for timers
        try:
            while (frame := read_frame(inp)) is not None:
                loop.call_soon_threadsafe(requests.put_nowait, frame)
        except Exception as e:
            logging.getLogger(__name__).error("a bad request: %s: %s", type(e).__name__, e)
        # the end of the input: the agent closed it, or is gone. The worker ends (its
        # files flushed) when the loop is free, else after EXIT_GRACE anyway: even if the
        # operator spins (this thread still gets the interpreter between its bytecodes)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(requests.put_nowait, None)
        threading.Event().wait(EXIT_GRACE)
        os._exit(0)

    threading.Thread(target=read, name="requests", daemon=True).start()
    host = Host(out)
    while True:
        req = await requests.get()
        if req is None:
            return
        try:
            answer = {"id": req["id"], "ok": True, "result": await host.handle(req)}
        except Exception as e:
            answer = {"id": req["id"], "ok": False, "error": host.failed(req, e)}
        try:
            data = encode(answer)
        except TypeError as e:  # what the operator returned is no JSON
            error = f"{host.name}.{host.method}(): cannot send its output: {e}"
            data = encode({"id": req["id"], "ok": False, "error": error})
        host.send(data)


def main() -> None:
    die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    out = os.fdopen(os.dup(1), "wb")  # the protocol's (not inherited); fd 1 becomes stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}] %(message)s"
    )
    asyncio.run(serve(sys.stdin.buffer, out))


if __name__ == "__main__":
    main()
