"""User operators (``python:tests.harness.user_ops:Class``) for the worker-process tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from echo_agent.operators.base import Operator, Record, SourceOperator, TaskContext


class Upper(Operator):
    def process(self, record: Record) -> Any:
        yield {**record, "name": str(record["name"]).upper()}


class Spin(Operator):
    """Keeps a core busy for ``seconds`` per record (an operator that forgot to yield);
    ``mark``: a file touched as it starts spinning."""

    class Config(BaseModel):
        seconds: float = 1.0
        mark: str | None = None

    def process(self, record: Record) -> Any:
        if self.config.mark:
            Path(self.config.mark).touch()
        end = time.monotonic() + self.config.seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return [{**record, "spun": n > 0}]


class Counter(Operator):
    stateful = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.n = 0

    def process(self, record: Record) -> Any:
        self.n += 1
        return [{**record, "count": self.n}]

    def snapshot(self) -> Any:
        return {"n": self.n}

    def restore(self, state: Any) -> None:
        self.n = int(state["n"])


class Boom(Operator):
    def process(self, record: Record) -> Any:
        raise ValueError(f"cannot take {record}")


class Env(Operator):
    """Says what of the agent's environment it sees."""

    def process(self, record: Record) -> Any:
        return [{"secret": os.environ.get("ECHO_TEST_SECRET"), "pid": os.getpid(), "ppid": os.getppid()}]


class Ticks(SourceOperator):
    class Config(BaseModel):
        count: int = 10

    async def generate(self) -> AsyncIterator[Record]:
        for i in range(self.config.count):
            if i % 100 == 0:
                await asyncio.sleep(0)
            yield {"i": i}


class Timer(Operator):
    """Emits outside process(): from a timer of its own loop."""

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        asyncio.get_running_loop().call_later(0.05, self._tick)

    def _tick(self) -> None:
        assert self.ctx.emit is not None
        self.ctx.emit([{"tick": True}])

    def process(self, record: Record) -> Any:
        return None


class NotAnOperator:
    pass


class Exit(Operator):
    """Ends its process at the first record (a crash that no exception reports)."""

    class Config(BaseModel):
        code: int = 3

    def process(self, record: Record) -> Any:
        os._exit(self.config.code)


class Forks(Operator):
    """Starts a program of its own at the first record; says its pid."""

    child: subprocess.Popen[bytes] | None = None

    def process(self, record: Record) -> Any:
        if self.child is None:
            self.child = subprocess.Popen(["sleep", "600"])
        return [{"child": self.child.pid}]


class Steps(SourceOperator):
    """A source with a state: where it is (a restored copy goes on from there)."""

    stateful = True

    class Config(BaseModel):
        count: int = 10

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.n = 0

    async def generate(self) -> AsyncIterator[Record]:
        while self.n < self.config.count:
            self.n += 1
            yield {"i": self.n}

    def snapshot(self) -> Any:
        return {"n": self.n}

    def restore(self, state: Any) -> None:
        self.n = int(state["n"])


class Ticker(Operator):
    """Emits from a timer every few ms, counting in its state; stops emitting at close."""

    stateful = True
    close_emits = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.n = 0

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.timer = asyncio.get_running_loop().call_later(0.002, self._tick)

    def _tick(self) -> None:
        assert self.ctx.emit is not None
        self.n += 1
        self.ctx.emit([{"n": self.n}])
        self.timer = asyncio.get_running_loop().call_later(0.002, self._tick)

    def process(self, record: Record) -> Any:
        return None

    def snapshot(self) -> Any:
        return {"n": self.n}

    async def close(self) -> Any:
        self.timer.cancel()
        return [{"closed": self.n}]


class Buffered(Operator):
    """A sink that buffers in process() and writes its file in flush()."""

    class Config(BaseModel):
        path: str

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.buffer: list[str] = []

    def process(self, record: Record) -> Any:
        self.buffer.append(str(record["i"]))
        return None

    def flush(self) -> None:
        with open(self.config.path, "a") as f:
            f.writelines(line + "\n" for line in self.buffer)
        self.buffer.clear()


class NotJson(Operator):
    def process(self, record: Record) -> Any:
        return [{"raw": b"bytes"}]
