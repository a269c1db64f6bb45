"""stats.window_aggregate: count and time windows, per key, tumbling and sliding."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from echo_agent.operators import Operator, TaskContext, build
from echo_agent.operators.stats_ops import WindowAggregate
from tests.harness.waiting import eventually


def run(op: Operator, records: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in records:
        out.extend(op.process(r) or [])
    return out


async def closed(op: Operator) -> list[dict[str, Any]]:
    return list(await op.close() or [])


def window(
    key: Any, op: str, field: str | None, value: Any, count: int, start: Any, end: Any
) -> dict[str, Any]:
    return {
        "key": key,
        "op": op,
        "field": field,
        "value": value,
        "count": count,
        "window_start": start,
        "window_end": end,
    }


# ------------------------------------------------------------------------ count windows


async def test_count_windows_per_key_with_the_final_partial_one() -> None:
    op = build("stats.window_aggregate", {"op": "avg", "field": "v", "key": "k", "count": 2})
    recs = [{"k": "a", "v": 1}, {"k": "b", "v": 10}, {"k": "a", "v": 3}, {"k": "a", "v": "x"}]
    assert run(op, recs) == [window("a", "avg", "v", 2.0, 2, 0, 2)]
    assert run(op, [{"k": "b", "v": 20}]) == [window("b", "avg", "v", 15.0, 2, 0, 2)]
    # a's third record had no number: its window holds no value (avg null), count 0
    assert await closed(op) == [window("a", "avg", "v", None, 0, 2, 3)]


@pytest.mark.parametrize(
    ("op", "value"), [("count", 3), ("sum", 6.5), ("avg", 6.5 / 3), ("min", -1.0), ("max", 5.5)]
)
def test_each_op(op: str, value: float) -> None:
    agg = build("stats.window_aggregate", {"op": op, "field": "v", "count": 4})
    recs = [{"v": 2}, {"v": None}, {"v": 5.5}, {"v": -1}]
    assert run(agg, recs) == [window(None, op, "v", value, 3, 0, 4)]


def test_count_without_field_counts_records() -> None:
    op = build("stats.window_aggregate", {"op": "count", "count": 3, "key": "k"})
    out = run(op, [{"k": 1}, {}, {"k": 1}, {"k": 1}])
    assert out == [window(1, "count", None, 3, 3, 0, 3)]


async def test_sliding_count_windows() -> None:
    op = build("stats.window_aggregate", {"op": "sum", "field": "v", "count": 3, "slide": 2})
    out = run(op, ({"v": i} for i in range(1, 7)))  # 1..6
    assert [(w["window_start"], w["window_end"], w["value"]) for w in out] == [(0, 3, 6.0), (2, 5, 12.0)]
    # record 6 arrived after the last window: the final one holds the last three
    assert await closed(op) == [window(None, "sum", "v", 15.0, 3, 3, 6)]
    assert await closed(op) == []


async def test_count_windows_snapshot_restore() -> None:
    cfg = {"op": "max", "field": "v", "key": "k", "count": 3, "slide": 1}
    op = build("stats.window_aggregate", cfg)
    run(op, [{"k": "a", "v": 5}, {"k": "b", "v": 1}, {"k": "a", "v": 2}])
    copy = build("stats.window_aggregate", cfg)
    copy.restore(orjson.loads(orjson.dumps(op.snapshot())))
    more = [{"k": "a", "v": 1}, {"k": "a", "v": 0}, {"k": "b", "v": 7}]
    assert (
        run(copy, more)
        == run(op, more)
        == [window("a", "max", "v", 5.0, 3, 0, 3), window("a", "max", "v", 2.0, 3, 1, 4)]
    )
    assert await closed(copy) == await closed(op)


async def test_keys_beyond_max_windows_close_early() -> None:
    op = build("stats.window_aggregate", {"op": "count", "key": "k", "count": 10, "max_windows": 2})
    out = run(op, [{"k": "a"}, {"k": "b"}, {"k": "a"}, {"k": "c"}])
    assert out == [window("b", "count", None, 1, 1, 0, 1)]  # b was the least recently seen
    assert [w["key"] for w in await closed(op)] == ["a", "c"]


# ------------------------------------------------------------------------- event time


async def test_event_time_tumbling_windows_close_as_time_passes() -> None:
    op = build(
        "stats.window_aggregate",
        {"op": "sum", "field": "v", "key": "k", "seconds": 60, "time_field": "ts"},
    )
    m = 60_000  # one minute in ms
    assert (
        run(op, [{"ts": 10, "k": "a", "v": 1}, {"ts": m - 1, "k": "b", "v": 2}, {"ts": 5, "k": "a", "v": 3}])
        == []
    )
    out = run(op, [{"ts": m, "k": "a", "v": 10}])  # the first minute has passed
    assert out == [window("a", "sum", "v", 4.0, 2, 0, m), window("b", "sum", "v", 2.0, 1, 0, m)]
    assert run(op, [{"ts": 30, "k": "a", "v": 100}]) == []  # late: its window closed
    assert op.late == 1  # type: ignore[attr-defined]
    assert run(op, [{"ts": "noon", "v": 1}, {"v": 1}]) == []  # no usable time: skipped
    assert await closed(op) == [window("a", "sum", "v", 10.0, 1, m, 2 * m)]


def test_event_time_lateness_and_seconds_unit() -> None:
    cfg = {"op": "count", "seconds": 10, "time_field": "t", "time_unit": "s", "lateness": 5}
    op = build("stats.window_aggregate", cfg)
    assert run(op, [{"t": 1}, {"t": 12}, {"t": 9.5}]) == []  # 9.5 is within the lateness
    assert run(op, [{"t": 15}]) == [window(None, "count", None, 2, 2, 0, 10)]


async def test_event_time_sliding_windows_hold_every_record_they_cover() -> None:
    cfg = {"op": "count", "seconds": 10, "slide": 5, "time_field": "t", "time_unit": "s"}
    op = build("stats.window_aggregate", cfg)
    out = run(op, [{"t": 1}, {"t": 6}, {"t": 11}, {"t": 30}])
    assert [(w["window_start"], w["window_end"], w["value"]) for w in out] == [
        (-5, 5, 1),
        (0, 10, 2),
        (5, 15, 2),
        (10, 20, 1),
    ]
    assert [(w["window_start"], w["value"]) for w in await closed(op)] == [(25, 1), (30, 1)]


async def test_time_windows_snapshot_restore() -> None:
    cfg = {"op": "avg", "field": "v", "key": "k", "seconds": 1, "time_field": "ts"}
    op = build("stats.window_aggregate", cfg)
    run(op, [{"ts": 100, "k": "a", "v": 1}, {"ts": 1500, "k": "a", "v": 2}, {"ts": 1600, "k": "b", "v": 4}])
    copy = build("stats.window_aggregate", cfg)
    copy.restore(orjson.loads(orjson.dumps(op.snapshot())))
    more = [{"ts": 1700, "k": "a", "v": 4}, {"ts": 900, "k": "a", "v": 0}, {"ts": 2000, "k": "b", "v": 0}]
    assert run(copy, more) == run(op, more)
    assert copy.late == op.late == 1  # type: ignore[attr-defined]
    assert await closed(copy) == await closed(op) == [window("b", "avg", "v", 0.0, 1, 2000, 3000)]


# -------------------------------------------------------------------- processing time


async def test_processing_time_windows_close_on_the_next_record_and_at_the_end() -> None:
    now = [1000.2]
    op = build("stats.window_aggregate", {"op": "max", "field": "v", "seconds": 0.5})
    assert isinstance(op, WindowAggregate)
    op.clock = lambda: now[0]
    assert run(op, [{"v": 1}, {"v": 3}]) == []
    now[0] = 1000.7
    assert run(op, [{"v": 2}]) == [window(None, "max", "v", 3.0, 2, 1000, 1000.5)]
    assert await closed(op) == [window(None, "max", "v", 2.0, 1, 1000.5, 1001)]


async def test_processing_time_windows_close_on_a_timer_when_the_runner_lets_them_emit(
    tmp_path: Path,
) -> None:
    emitted: list[dict[str, Any]] = []
    ctx = TaskContext("df", "agg", "dev", 1, tmp_path)
    ctx.emit = emitted.extend  # type: ignore[attr-defined]
    op = build("stats.window_aggregate", {"op": "count", "seconds": 0.2})
    await op.open(ctx)
    try:
        assert run(op, [{}, {}]) == []
        # (both records normally fall in one window; two if a window boundary fell between them)
        await eventually(
            lambda: sum(w["value"] for w in emitted) == 2, timeout=3, what="the window closed by its timer"
        )
        assert all(w["window_end"] - w["window_start"] == pytest.approx(0.2) for w in emitted)
    finally:
        assert await closed(op) == []
    timer = op._timer  # type: ignore[attr-defined]
    assert timer is None
    await asyncio.sleep(0)


async def test_without_an_emit_callback_no_timer_runs(tmp_path: Path) -> None:
    op = build("stats.window_aggregate", {"op": "count", "seconds": 0.2})
    await op.open(TaskContext("df", "agg", "dev", 1, tmp_path))
    assert op._timer is None  # type: ignore[attr-defined]
    assert run(op, [{}]) == []
    assert [w["value"] for w in await closed(op)] == [1]


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"op": "avg", "count": 3}, "op avg needs field"),
        ({"op": "count"}, "exactly one of count"),
        ({"op": "count", "count": 3, "seconds": 1}, "exactly one of count"),
        ({"op": "count", "count": 3, "slide": 4}, "slide of a count window"),
        ({"op": "count", "count": 3, "slide": 1.5}, "slide of a count window"),
        ({"op": "count", "count": 3, "time_field": "t"}, "time_field applies only to time windows"),
        ({"op": "count", "seconds": 10, "slide": 3}, "whole multiple of slide"),
        ({"op": "count", "seconds": 10, "slide": 0.001}, "at most 1000 overlapping"),
        ({"op": "median", "count": 3}, "op"),
        ({"op": "count", "count": 3, "window": 1}, "window"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build("stats.window_aggregate", config)
