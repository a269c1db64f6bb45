"""``io.table_sink``: records as rows of a table in a local SQLite database.

What the original ECHO's ``InsertAzure`` did with an Azure Table, on the device's own disk:
each record becomes a row, a column per field (a field seen for the first time adds its
column). With ``key``, the row's identity is the values of those fields and a record with
the same key replaces the row (Azure's insert-or-replace): a record delivered again after a
restart leaves the table as it was. Numbers, strings and booleans are stored as they are,
anything else as JSON text.

Rows are written as records come and committed at ``flush()`` (after each input message,
before it is acknowledged), in WAL mode: a crash loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from echo_shared.catalogue.io import TableSinkConfig

from .base import Operator, Record, TaskContext
from .etl.errors import BadRecord, DeviceFileError

ROW_KEY = "_key"  # the column holding a keyed row's identity
VALUE = "value"  # the column of a record that is not an object


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return value
    return orjson.dumps(value).decode()


class TableSink(Operator):
    config: TableSinkConfig

    def __init__(self, config: TableSinkConfig) -> None:
        super().__init__(config)
        self._db: sqlite3.Connection | None = None
        self._columns: set[str] = set()
        self.rows = 0  # rows written by this copy

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        try:
            self._db = await asyncio.to_thread(self._connect, self.config.path)
        except (OSError, sqlite3.Error) as e:
            raise DeviceFileError(
                "path", self.config.path, ctx.device, f"cannot be opened as a database ({e})"
            ) from e

    def _connect(self, raw: str) -> sqlite3.Connection:
        path = Path(raw).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        table = _quoted(self.config.table)
        first = f"{ROW_KEY} TEXT PRIMARY KEY" if self.config.key else "_row INTEGER PRIMARY KEY"
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({first})")
        self._columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        db.commit()
        return db

    def _add_columns(self, names: list[str]) -> None:
        assert self._db is not None
        for name in names:
            if name not in self._columns:
                self._db.execute(f"ALTER TABLE {_quoted(self.config.table)} ADD COLUMN {_quoted(name)}")
                self._columns.add(name)

    def process(self, record: Record) -> None:
        assert self._db is not None
        row = dict(record) if isinstance(record, dict) else {VALUE: record}
        row = {str(k): _cell(v) for k, v in row.items()}
        key = self.config.key
        if key:
            missing = [k for k in key if k not in row]
            if missing:
                raise BadRecord("io.table_sink", f"a record without its key field(s) {missing}: {row}"[:500])
            row[ROW_KEY] = orjson.dumps([row[k] for k in key]).decode()
        self._add_columns([k for k in row if k not in self._columns])
        names = list(row)
        sql = (
            f"INSERT OR REPLACE INTO {_quoted(self.config.table)} "
            f"({', '.join(map(_quoted, names))}) VALUES ({', '.join('?' * len(names))})"
        )
        self._db.execute(sql, [row[n] for n in names])
        self.rows += 1

    def flush(self) -> None:
        if self._db is not None:
            self._db.commit()

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.commit()
            await asyncio.to_thread(db.close)


OPERATORS: dict[str, type[Operator]] = {"io.table_sink": TableSink}
