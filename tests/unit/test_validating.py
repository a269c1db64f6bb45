"""DAG validation: every problem found, located, at once."""

from __future__ import annotations

from typing import Any

import pytest

from echo_scheduler.validating import problems, topological_order, validate
from echo_shared.errors import SpecError
from echo_shared.models import DataflowSpec


def make(tasks: list[dict[str, Any]], edges: list[tuple[str, str]]) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {"name": "t", "tasks": tasks, "edges": [{"from": a, "to": b} for a, b in edges]}
    )


GEN = {"id": "gen", "operator": "io.generate", "config": {"count": 5}}


def p(tid: str, op: str = "core.passthrough", **kw: Any) -> dict[str, Any]:
    return {"id": tid, "operator": op, **kw}


def locs(spec: DataflowSpec) -> dict[str, str]:
    return {x.loc: x.msg for x in problems(spec)}


def test_a_sound_spec_has_no_problems() -> None:
    spec = make([GEN, p("a"), p("s", "io.file_sink", config={"path": "/tmp/x"})], [("gen", "a"), ("a", "s")])
    validate(spec)
    assert topological_order(spec) == ["gen", "a", "s"]


def test_cycle_is_reported_with_its_path() -> None:
    found = locs(make([GEN, p("a"), p("b")], [("gen", "a"), ("a", "b"), ("b", "a")]))
    ((loc, msg),) = [(k, v) for k, v in found.items() if "cycle" in v]
    assert loc.startswith("edges[") and ("a -> b -> a" in msg or "b -> a -> b" in msg)


def test_self_loop() -> None:
    assert "edges[1]" in locs(make([GEN, p("a")], [("gen", "a"), ("a", "a")]))


def test_unknown_operator_and_bad_config_together() -> None:
    found = locs(
        make(
            [{"id": "gen", "operator": "io.generate", "config": {"count": -1}}, p("x", "nope")],
            [("gen", "x")],
        )
    )
    assert "tasks[1].operator" in found
    assert "tasks[0].config.count" in found


def test_missing_config_field() -> None:
    assert "tasks[0].config.count" in locs(make([{"id": "gen", "operator": "io.generate"}], []))


def test_edges_to_missing_tasks_and_duplicates() -> None:
    found = locs(make([GEN, p("a"), p("a")], [("gen", "a"), ("gen", "a"), ("ghost", "a")]))
    assert "tasks[2].id" in found
    assert "edges[1]" in found and "duplicate" in found["edges[1]"]
    assert "edges[2].from" in found


def test_roles_are_checked() -> None:
    found = locs(
        make([GEN, p("s", "io.file_sink", config={"path": "x"}), p("a")], [("gen", "s"), ("s", "a")])
    )
    assert "edges[1].from" in found  # a sink has no output
    found = locs(make([GEN, p("a")], []))
    assert "tasks[1]" in found  # a transform needs an input


def test_validate_raises_with_every_problem() -> None:
    with pytest.raises(SpecError) as e:
        validate(make([GEN, p("x", "nope"), p("x")], [("gen", "zzz")]))
    assert len(e.value.problems) >= 3
