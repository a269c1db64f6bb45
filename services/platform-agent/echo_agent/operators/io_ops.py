"""Implementations of the io operators (catalogue: ``echo_shared.catalogue.io``).

Files and directories live in ``io_files``, brokers in ``io_brokers``, the SQLite table sink in
``io_table``; the log sink is here.
"""

from __future__ import annotations

import orjson

from echo_shared.catalogue.io import LogSinkConfig

from . import io_brokers, io_files, io_table
from .base import Operator, Record, TaskContext


class LogSink(Operator):
    """``io.log_sink``: logs records at info level through the task's logger.

    With ``every: N`` it logs the 1st, (N+1)th, ... record; longer than ``max_chars``,
    a record is cut (and says so).
    """

    config: LogSinkConfig

    def __init__(self, config: LogSinkConfig) -> None:
        super().__init__(config)
        self.count = 0

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)

    def process(self, record: Record) -> None:
        self.count += 1
        if (self.count - 1) % self.config.every:
            return
        text = orjson.dumps(record, default=str).decode()
        limit = self.config.max_chars
        if len(text) > limit:
            text = f"{text[:limit]}... ({len(text)} chars)"
        self.ctx.log.info("record %d: %s", self.count, text)


OPERATORS: dict[str, type[Operator]] = {
    **io_files.OPERATORS,
    **io_brokers.OPERATORS,
    **io_table.OPERATORS,
    "io.log_sink": LogSink,
}
