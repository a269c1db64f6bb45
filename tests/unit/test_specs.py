"""Reading specs from request bodies: JSON or YAML, with located errors."""

from __future__ import annotations

import pytest

from echo_master.errors import UnsupportedMediaType
from echo_master.specs import locate, read_spec
from echo_shared.errors import Problem, SpecError

YAML = b"""
name: demo
tasks:
  - id: gen
    operator: io.generate
    config: {count: 1000, rate: 0}
    placement: {tier: edge}
    resources: {cpu: 0.1, memory_mb: 32}
  - id: sink
    operator: io.file_sink
    config: {path: /tmp/out.jsonl}
edges:
  - {from: gen, to: sink}
"""


def test_the_issue_example_parses() -> None:
    s = read_spec(YAML, "application/yaml")
    assert [t.id for t in s.tasks] == ["gen", "sink"]
    assert s.edges[0].from_ == "gen" and s.edges[0].model.value == "stream"
    assert s.tasks[0].placement.tiers()[0].value == "edge"


def test_json_with_charset() -> None:
    s = read_spec(
        b'{"name": "x", "tasks": [{"id": "g", "operator": "io.generate"}]}', "application/json; charset=utf-8"
    )
    assert s.name == "x"


@pytest.mark.parametrize(
    ("body", "ctype", "loc", "needle"),
    [
        (b"", "application/json", "body", "empty"),
        (b"{", "application/json", "body", "invalid JSON"),
        (b"a: [", "application/yaml", "body", "invalid YAML at line"),
        (b"42", "application/json", "body", "got int"),
        (b'{"name": "x", "tasks": []}', "application/json", "tasks", "at least 1"),
        (b'{"name": "x", "tasks": [{"id": "g", "operator": "o", "zz": 1}]}', "", "tasks[0].zz", "Extra"),
        (
            b'{"name": "x", "tasks": [{"id": "g", "operator": "o"}], "edges": [{"to": "g"}]}',
            "",
            "edges[0].from",
            "Field required",
        ),
    ],
)
def test_problems_are_located(body: bytes, ctype: str, loc: str, needle: str) -> None:
    with pytest.raises(SpecError) as e:
        read_spec(body, ctype)
    assert any(p.loc == loc and needle in p.msg for p in e.value.problems), e.value.problems


def test_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        read_spec(b"x", "application/xml")


def test_problems_carry_their_line() -> None:
    body = YAML.replace(b"placement: {tier: edge}", b"placement: {tier: moon}")
    with pytest.raises(SpecError) as e:
        read_spec(body, "application/yaml")
    located = locate(body, e.value.problems)
    assert {p.line for p in located} == {7}  # the 'tier: moon' line (the body starts with a newline)
    # a problem found later (the scheduler's) is placed too: at its key, or at the object
    # missing it, as deep as the text goes
    later = locate(
        YAML, [Problem("tasks[1].operator", "unknown"), Problem("tasks[1].config.count", "missing")]
    )
    assert [(p.line, p.column) for p in later] == [(10, 5), (11, 13)]
    assert locate(YAML, [Problem("edges[0].to", "no such task")])[0].line == 13


def test_syntax_errors_carry_their_line() -> None:
    with pytest.raises(SpecError) as e:
        read_spec(b"name: x\ntasks: [\n", "application/yaml")
    assert e.value.problems[0].line == 3
    with pytest.raises(SpecError) as e:
        read_spec(b'{"name": "x",\n "tasks": }', "application/json")
    assert (e.value.problems[0].line, e.value.problems[0].column) == (2, 11)
