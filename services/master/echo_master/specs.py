"""Reading a dataflow spec from a request body (JSON or YAML) with located errors: each
problem names its field (``tasks[2].operator``) and, where the body shows it, its line and
column (``locate``: the console's editor marks them)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml
from pydantic import ValidationError

from echo_shared.documents import DocumentError, load_json, load_yaml
from echo_shared.errors import Problem, SpecError
from echo_shared.models import DataflowSpec
from echo_shared.operators import join_loc

from .errors import UnsupportedMediaType

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
JSON_TYPES = {"application/json", "text/json", ""}


def parse_body(body: bytes, content_type: str | None) -> Any:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in YAML_TYPES and ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType(ctype)
    if not body.strip():
        raise SpecError([Problem("body", "the body is empty: expected a dataflow spec", "empty")])
    try:
        return load_yaml(body) if ctype in YAML_TYPES else load_json(body)
    except DocumentError as e:
        raise SpecError([Problem("body", str(e), e.kind.lower(), e.line, e.column)]) from e


def problems_from(e: ValidationError, prefix: str = "") -> list[Problem]:
    return [Problem(join_loc(prefix, err["loc"]) or "body", err["msg"], err["type"]) for err in e.errors()]


def read_spec(body: bytes, content_type: str | None) -> DataflowSpec:
    data = parse_body(body, content_type)
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "nothing"
        raise SpecError([Problem("body", f"expected a dataflow spec (an object), got {kind}", "type")])
    try:
        return DataflowSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e)) from e


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parts(loc: str) -> list[str | int]:
    out: list[str | int] = []
    for name, index in _PART.findall(loc):
        out.append(int(index) if index else name)
    if out and out[0] == "body":
        out = out[1:]
    return out


def _node_at(root: yaml.Node, parts: list[str | int]) -> yaml.Node:
    """The deepest node of the document along a problem's path (a field's key when it is
    there; the object missing it otherwise)."""
    node = root
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if hit is None:
                continue  # a validator's step (e.g. a union's member): not in the text
            if part is parts[-1]:
                key: yaml.Node = hit[0]
                return key
            node = hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
    return node


def locate(body: bytes, problems: list[Problem]) -> list[Problem]:
    """The problems with the line and column of their field in ``body`` (YAML or JSON text)."""
    if all(p.line is not None for p in problems):
        return problems
    try:
        root = yaml.compose(body, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return problems
    if root is None:
        return problems
    out = []
    for p in problems:
        if p.line is None:
            mark = _node_at(root, _parts(p.loc)).start_mark
            p = dataclasses.replace(p, line=mark.line + 1, column=mark.column + 1)
        out.append(p)
    return out
