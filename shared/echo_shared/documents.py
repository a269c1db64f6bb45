"""Reading a document a user wrote (a spec, a device list, a class map): JSON with a JSON
parser, YAML with libyaml's C loader, one error type that says where.

JSON is the common case for big inputs (a 1,000-task spec is a 270 KB file; PyYAML's pure
Python loader takes seconds over it, orjson milliseconds). A text that looks like JSON (it
starts with ``{`` or ``[``) is parsed as JSON first; one that is not valid JSON is read as
YAML (flow-style YAML starts the same way), so the error a user sees is YAML's, which
names the line.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentError(ValueError):
    """Not valid JSON or YAML; ``line`` and ``column`` (1-based) when known."""

    def __init__(self, kind: str, problem: str, line: int | None = None, column: int | None = None) -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"invalid {kind}{where}: {problem}")
        self.kind = kind
        self.problem = problem
        self.line = line
        self.column = column


def load_json(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise DocumentError("JSON", e.msg, e.lineno, e.colno) from None


def load_yaml(text: str | bytes) -> Any:
    """YAML (JSON included) with the C loader when PyYAML has it (it does on every wheel)."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if mark is None:
            raise DocumentError("YAML", problem) from None
        raise DocumentError("YAML", problem, mark.line + 1, mark.column + 1) from None


def load_document(text: str | bytes) -> Any:
    """A JSON or YAML document: JSON-looking text with the JSON parser, else YAML."""
    head = text.lstrip()[:1]
    if head in ("{", "[", b"{", b"["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # flow-style YAML, or broken JSON: YAML's error names the line
    return load_yaml(text)
