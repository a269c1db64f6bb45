"""Built-in operators: exactly the semantics the issue fixes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from echo_agent.operators import TaskContext, UnknownOperator, build, implementations
from echo_shared.operators import CATALOGUE


def test_every_catalogued_operator_is_implemented() -> None:
    assert set(CATALOGUE) == set(implementations())


async def test_generate_counts_and_merges_fields() -> None:
    op = build("io.generate", {"count": 4, "fields": {"city": "nyc"}})
    out = [r async for r in op.generate()]  # type: ignore[attr-defined]
    assert out == [{"seq": i, "city": "nyc"} for i in range(4)]


async def test_generate_resumes_from_its_snapshot() -> None:
    op = build("io.generate", {"count": 5})
    it = op.generate()  # type: ignore[attr-defined]
    assert [await it.__anext__() for _ in range(2)] == [{"seq": 0}, {"seq": 1}]
    state = op.snapshot()
    again = build("io.generate", {"count": 5})
    again.restore(state)
    assert [r async for r in again.generate()] == [{"seq": i} for i in (2, 3, 4)]  # type: ignore[attr-defined]


def test_passthrough_forwards_unchanged() -> None:
    rec = {"a": 1, "b": [1, 2]}
    assert list(build("core.passthrough", {}).process(rec) or []) == [rec]


def test_count_by_key_counts_and_snapshots() -> None:
    op = build("stats.count_by_key", {"key": "k"})
    outs = [next(iter(op.process({"k": k, "seq": i}) or [])) for i, k in enumerate("abab")]
    assert outs[-1] == {"key": "b", "count": 2, "seq": 3}
    assert outs[0] == {"key": "a", "count": 1, "seq": 0}
    copy = build("stats.count_by_key", {"key": "k"})
    copy.restore(op.snapshot())
    assert next(iter(copy.process({"k": "a", "seq": 9}) or [])) == {"key": "a", "count": 3, "seq": 9}


async def test_file_sink_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    op = build("io.file_sink", {"path": str(path)})
    await op.open(TaskContext("df", "sink", "dev", 1, tmp_path))
    for i in range(3):
        op.process({"seq": i})
    op.flush()
    assert len(path.read_bytes().splitlines()) == 3
    await op.close()
    assert [orjson.loads(x) for x in path.read_bytes().splitlines()] == [{"seq": i} for i in range(3)]


def test_unknown_operator_and_bad_config() -> None:
    with pytest.raises(UnknownOperator):
        build("io.teleport", {})
    with pytest.raises(ValidationError):
        build("io.generate", {"count": "x"})
