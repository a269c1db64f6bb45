"""Operator implementations, by the names of ``echo_shared.operators.CATALOGUE``."""

from __future__ import annotations

from echo_shared.operators import lookup

from .base import Operator, Record, SourceOperator, TaskContext
from .builtin import CountByKey, FileSink, Generate, Passthrough

IMPLEMENTATIONS: dict[str, type[Operator]] = {
    "io.generate": Generate,
    "core.passthrough": Passthrough,
    "stats.count_by_key": CountByKey,
    "io.file_sink": FileSink,
}


class UnknownOperator(LookupError):
    pass


def build(name: str, config: dict[str, object]) -> Operator:
    """Instantiate an operator with its validated config (``UnknownOperator``, ``ValidationError``)."""
    info = lookup(name)
    impl = IMPLEMENTATIONS.get(name)
    if info is None or impl is None:
        raise UnknownOperator(f"this agent has no operator {name!r}")
    return impl(info.config.model_validate(config))


__all__ = [
    "IMPLEMENTATIONS",
    "Operator",
    "Record",
    "SourceOperator",
    "TaskContext",
    "UnknownOperator",
    "build",
]
