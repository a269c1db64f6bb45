"""User operators (``python:tests.harness.user_ops:Class``) for the worker-process tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from echo_agent.operators.base import Operator, Record, SourceOperator, TaskContext


class Upper(Operator):
    def process(self, record: Record) -> Any:
        yield {**record, "name": str(record["name"]).upper()}


class Spin(Operator):
    """Keeps a core busy for ``seconds`` per record (an operator that forgot to yield)."""

    class Config(BaseModel):
        seconds: float = 1.0

    def process(self, record: Record) -> Any:
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
