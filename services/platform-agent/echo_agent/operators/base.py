"""The operator API: what every operator implements, built-in or user-supplied.

An operator is a class constructed with its config (the catalogue's pydantic model for
built-ins; for ``python:pkg.mod:Class`` operators, the class's own ``Config`` model if
it has one, else the raw dict)::

    class Upper(Operator):
        def process(self, record):
            yield {**record, "name": record["name"].upper()}

Life cycle, driven by the agent's task runner:

- ``await open(ctx)`` once, before the first record;
- ``process(record)`` for every input record, returning the output records (an
  iterable, or ``None`` for none);
- ``process_batch(records)`` for every micro-batch when the task reads a batch edge,
  or when the class sets ``wants_batches = True`` (records arriving on a stream edge are
  then gathered into batches for it, of ``batch_count`` records or ``batch_seconds``; with
  ``batch_eager = True`` a batch goes as soon as no message waits). The default calls
  ``process`` per record;
- either may be ``async def`` (for I/O, like running a process); the runner awaits it;
- ``flush()`` after each delivery from a channel, before it is acknowledged: make what
  was processed durable (a sink flushes its file here);
- ``await close()`` once at the end of input; may return final records;
- ``snapshot()`` / ``restore(state)``: the operator's state as a JSON-able value, for
  checkpoints and migration. Stateless operators keep the defaults;
- ``epoch()`` / ``delta(since)``, optional, for a large state: ``snapshot()`` begins a new
  epoch, and ``epoch()`` right after it names that epoch; ``delta(e)`` is every change
  made to the state in epochs ``e`` and later, as a delta (``echo_shared.statedelta``:
  entries merged into or dropped from the state's fields, fields set whole). A move then
  sends only the changes since the checkpoint its target holds already. ``epoch()``
  returns None (the default) when the operator cannot say;
- ``await suspend()`` when the task stops to move (after ``snapshot()``): release what
  ``open`` took and emit nothing that the state does not cover. The default calls
  ``close()`` unless the class sets ``close_emits = True`` (its ``close()`` means end of
  stream: e.g. it emits partial windows, which a moved copy will emit in its turn).

A source overrides ``generate()``, an async iterator of records, instead of ``process``.

Files: an operator whose catalogue entry ``consumes``/``produces`` files handles file
records, ``{"path": <local path>, "name": <file name>, "size": <bytes>, ...}``. File edges
move the bytes: the consumer's record names a local copy, which the runner deletes after
``process`` returns unless the operator moved it away.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from echo_shared.credentials import Access

Record = dict[str, Any]
Output = Iterable[Record] | None


@dataclass
class TaskContext:
    dataflow: str
    task: str
    device: str
    generation: int
    data_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("echo.task"))
    mqtt_url: str = ""
    nats_url: str | None = None
    # the device's logins and CA for its own brokers (operators that use them: io.mqtt_*, io.nats_*)
    access: Access | None = None
    # emit records outside process()/close(), e.g. when a timer closes a window. What is
    # emitted this way is not tied to an input message's acknowledgement: keep it in the
    # operator's state (snapshot) if it must survive a crash.
    emit: Callable[[Iterable[Record]], None] | None = None


class Operator:
    stateful: ClassVar[bool] = False
    wants_batches: ClassVar[bool] = False
    close_emits: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    async def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def process(self, record: Record) -> Any:
        """Output records for one input record (sync, or ``async def`` in a subclass)."""
        raise NotImplementedError(f"{type(self).__name__} does not process records")

    def process_batch(self, records: list[Record]) -> Any:
        """Output records for one micro-batch. The default processes each record."""
        out: list[Record] = []
        for r in records:
            result = self.process(r)
            if result is not None:
                out.extend(result)
        return out

    def flush(self) -> None:
        return None

    async def close(self) -> Output:
        return None

    def snapshot(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        return None

    def epoch(self) -> int | None:
        return None

    def delta(self, since: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not track changes to its state")

    async def suspend(self) -> Output:
        if type(self).close_emits:
            return None
        result: Any = self.close()  # async here; a user class may have made it sync
        if inspect.isawaitable(result):
            result = await result
        return cast(Output, result)


class SourceOperator(Operator):
    def process(self, record: Record) -> Output:
        raise TypeError(f"{type(self).__name__} is a source and takes no input")

    def generate(self) -> AsyncIterator[Record]:
        raise NotImplementedError
