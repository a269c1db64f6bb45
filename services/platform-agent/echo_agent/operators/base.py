"""The operator API: what every operator implements, built-in or user-supplied.

An operator is a class constructed with its validated config::

    class Upper(Operator):
        def process(self, record):
            yield {**record, "name": record["name"].upper()}

Life cycle, driven by the agent's task runner:

- ``await open(ctx)`` once, before the first record;
- ``process(record)`` for every input record, returning the output records (an
  iterable, or ``None`` for none); synchronous, because it is the hot path;
- ``flush()`` after each delivery from the channel, before it is acknowledged:
  make what was processed durable (a sink flushes its file here);
- ``await close()`` once at the end of input; may return final records;
- ``snapshot()`` / ``restore(state)``: the operator's state as a JSON-able value, for
  checkpoints and migration. Stateless operators keep the defaults.

A source overrides ``generate()``, an async iterator of records, instead of ``process``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

Record = dict[str, Any]


@dataclass
class TaskContext:
    dataflow: str
    task: str
    device: str
    generation: int
    data_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("echo.task"))


class Operator:
    stateful: ClassVar[bool] = False

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def process(self, record: Record) -> Iterable[Record] | None:
        raise NotImplementedError

    def flush(self) -> None:
        return None

    async def close(self) -> Iterable[Record] | None:
        return None

    def snapshot(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        return None


class SourceOperator(Operator):
    def process(self, record: Record) -> Iterable[Record] | None:
        raise TypeError(f"{type(self).__name__} is a source and takes no input")

    def generate(self) -> AsyncIterator[Record]:
        raise NotImplementedError
