"""The onnx runtime (implementation pending)."""

from __future__ import annotations

from ..operators.base import Operator

OPERATORS: dict[str, type[Operator]] = {}


def available() -> str | None:
    return "not implemented yet"
