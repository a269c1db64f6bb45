"""Reading a dataflow spec from a request body (JSON or YAML) with located errors."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from pydantic import ValidationError

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
    if ctype in YAML_TYPES:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise SpecError([Problem("body", f"invalid YAML{where}: {problem}", "yaml")]) from e
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise SpecError(
            [Problem("body", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", "json")]
        ) from e


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
