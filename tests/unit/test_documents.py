"""Documents users write (specs, device lists, class maps): JSON through a JSON parser, YAML
through libyaml's C loader, one error that says where."""

from __future__ import annotations

import pytest

from echo_shared.documents import DocumentError, load_document, load_json, load_yaml


def test_json_and_yaml_read_the_same_document() -> None:
    doc = {"name": "x", "tasks": [{"id": "a", "n": 1.5, "ok": True, "none": None}]}
    assert load_document('{"name": "x", "tasks": [{"id": "a", "n": 1.5, "ok": true, "none": null}]}') == doc
    assert load_document(b"name: x\ntasks:\n  - {id: a, n: 1.5, ok: true, none: null}\n") == doc
    assert load_document("{name: x, tasks: [{id: a, n: 1.5, ok: true, none: null}]}") == doc  # flow YAML


@pytest.mark.parametrize(
    ("text", "kind", "line"),
    [
        ("a: [1, 2\nb: 3\n", "YAML", 2),
        ('{"a": 1,\n "b": [}', "YAML", 2),  # not JSON: read as (flow) YAML, whose error names the line
    ],
)
def test_errors_name_the_line(text: str, kind: str, line: int) -> None:
    with pytest.raises(DocumentError) as e:
        load_document(text)
    assert e.value.kind == kind and e.value.line == line, str(e.value)
    assert f"line {line}" in str(e.value)


def test_strict_loaders_keep_their_kind() -> None:
    with pytest.raises(DocumentError, match=r"invalid JSON at line 1, column \d+") as e:
        load_json(b'{"a": }')
    assert e.value.kind == "JSON"
    with pytest.raises(DocumentError, match="invalid YAML"):
        load_yaml("a: b: c")
    assert load_yaml("") is None
