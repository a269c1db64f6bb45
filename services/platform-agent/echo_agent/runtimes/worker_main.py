"""A worker process: runs one user operator for the agent (``workers`` is the agent's side).

Reads requests from stdin, answers on stdout (length-prefixed orjson frames, see
``workers``); what the operator prints goes to stderr (the agent's log), never into the
protocol. Its event loop runs between requests, so an operator's timers fire and what they
emit (``ctx.emit``) is sent at once. It dies with the agent (parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from ..operators.base import Operator, Record, TaskContext
from . import python_runtime
from .workers import read_frame, write_frame

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before we asked
        os._exit(1)


async def value(result: Any) -> Any:
    if inspect.isawaitable(result):
        result = await result
    return result


def records(result: Any) -> list[Record]:
    return [] if result is None else list(result)


class Host:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.op: Operator | None = None
        self.name = ""
        self.source: AsyncIterator[Record] | None = None
        self.pending: asyncio.Task[Record] | None = None

    def emit(self, recs: Any) -> None:
        write_frame(self.out, {"emit": records(recs)})

    async def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        if op == "load":
            self.name = str(req["name"]).removeprefix("python:")
            self.op = python_runtime.load(req["name"], req["config"])
            cls = type(self.op)
            return {
                "stateful": bool(getattr(cls, "stateful", False)),
                "close_emits": bool(getattr(cls, "close_emits", False)),
                "wants_batches": bool(getattr(cls, "wants_batches", False)),
                "is_source": callable(getattr(self.op, "generate", None)),
            }
        assert self.op is not None, "no operator loaded"
        if op == "open":
            c = req["ctx"]
            ctx = TaskContext(
                c["dataflow"], c["task"], c["device"], c["generation"], Path(c["data_dir"]), emit=self.emit
            )
            await value(self.op.open(ctx))
            return None
        if op == "process":
            return records(await value(self.op.process(req["record"])))
        if op == "process_batch":
            return records(await value(self.op.process_batch(req["records"])))
        if op == "flush":
            user: Any = self.op  # a user class may make flush()/restore() async
            await value(user.flush())
            return None
        if op == "snapshot":
            return await value(self.op.snapshot())
        if op == "restore":
            user = self.op
            await value(user.restore(req["state"]))
            return None
        if op in ("close", "suspend"):
            return records(await value(getattr(self.op, op)()))
        if op == "next":
            return await self.next(int(req["max"]), float(req["linger"]))
        raise ValueError(f"unknown request {op!r}")

    async def next(self, most: int, linger: float) -> dict[str, Any]:
        """Up to ``most`` records of the source, as soon as one is there (``linger`` more
        seconds to gather others)."""
        assert self.op is not None
        if self.source is None:
            self.source = self.op.generate()  # type: ignore[attr-defined]
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


async def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read() -> None:  # blocking reads in a thread: the loop stays free for timers
        while True:
            try:
                frame = read_frame(inp)
            except Exception:
                frame = None
            loop.call_soon_threadsafe(requests.put_nowait, frame)
            if frame is None:
                return

    threading.Thread(target=read, daemon=True).start()
    host = Host(out)
    while True:
        req = await requests.get()
        if req is None or req.get("op") == "exit":
            return
        try:
            result = await host.handle(req)
            answer = {"id": req["id"], "ok": True, "result": result}
        except Exception as e:
            where = f"{host.name}.{req.get('op')}()" if host.name else str(req.get("op"))
            detail = f"{type(e).__name__}: {e}"
            error = detail if req.get("op") == "load" else f"{where} raised {detail}"
            answer = {"id": req["id"], "ok": False, "error": error}
        try:
            write_frame(out, answer)
        except TypeError as e:  # what the operator returned is no JSON
            write_frame(
                out, {"id": req["id"], "ok": False, "error": f"{host.name}: cannot send its output: {e}"}
            )


def main() -> None:
    die_with_parent()
    out = os.fdopen(os.dup(1), "wb")  # the protocol's; fd 1 becomes stderr for prints
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    asyncio.run(serve(sys.stdin.buffer, out))


if __name__ == "__main__":
    main()
