"""``io.table_sink``: records as rows of a local SQLite table (what InsertAzure did with an
Azure Table): a column per field, keyed rows replaced, committed at each flush."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from echo_agent.operators import build
from echo_agent.operators.base import TaskContext
from echo_agent.operators.etl.errors import BadRecord, DeviceFileError


async def opened(config: dict[str, Any], tmp_path: Path) -> Any:
    op = build("io.table_sink", config)
    await op.open(TaskContext("df-1", "sink", "cloud-1", 1, tmp_path / "data"))
    return op


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


async def test_keyed_rows_are_replaced_and_new_fields_add_columns(tmp_path: Path) -> None:
    db = tmp_path / "tables" / "azure.sqlite"
    op = await opened(
        {"path": str(db), "table": "taxi", "key": ["taxi_identifier", "hack_license"]}, tmp_path
    )
    op.process({"taxi_identifier": "T1", "hack_license": "H1", "fare_amount": 12.5})
    op.process({"taxi_identifier": "T2", "hack_license": "H1", "fare_amount": 7.0, "tags": ["a"]})
    op.flush()
    # committed at flush: another connection sees both rows
    assert rows(db, "SELECT taxi_identifier, fare_amount FROM taxi ORDER BY 1") == [("T1", 12.5), ("T2", 7.0)]
    op.process({"taxi_identifier": "T1", "hack_license": "H1", "fare_amount": 13.0, "company": "uber"})
    await op.close()
    got = rows(db, "SELECT taxi_identifier, fare_amount, company, tags FROM taxi ORDER BY 1")
    assert got == [("T1", 13.0, "uber", None), ("T2", 7.0, None, '["a"]')], "replaced, not added"


async def test_without_a_key_every_record_is_a_row_and_a_restart_appends(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    op = await opened({"path": str(db)}, tmp_path)
    for i in range(3):
        op.process({"i": i})
    op.process("not an object")
    await op.close()
    again = await opened({"path": str(db)}, tmp_path)
    again.process({"i": 3})
    await again.close()
    assert rows(db, "SELECT i, value FROM records ORDER BY _row") == [
        (0, None),
        (1, None),
        (2, None),
        (None, "not an object"),
        (3, None),
    ]


async def test_a_record_without_its_key_is_a_bad_record_and_a_bad_path_names_itself(tmp_path: Path) -> None:
    op = await opened({"path": str(tmp_path / "k.sqlite"), "key": ["id"]}, tmp_path)
    with pytest.raises(BadRecord, match=r"key field\(s\) \['id'\]"):
        op.process({"other": 1})
    await op.close()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeviceFileError, match="cloud-1"):
        await opened({"path": str(blocker / "db.sqlite")}, tmp_path)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"path": "x.db", "table": "drop table; --"}, "should match pattern"),
        ({"path": "x.db", "key": []}, "at least 1 item"),
        ({"path": ""}, "at least 1 character"),
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        build("io.table_sink", config)
