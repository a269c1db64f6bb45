"""Operator implementations, by the names of the catalogue (``echo_shared.catalogue``).

Each family module (``builtin``, ``io_ops``, ``etl_ops``, ``stats_ops``, ``expr_ops``) and
each runtime (``echo_agent.runtimes``) exports ``OPERATORS``; ``build`` instantiates one.
"""

from __future__ import annotations

import functools
from typing import Any

from echo_shared.operators import PYTHON_PREFIX, lookup

from . import builtin, etl_ops, expr_ops, io_ops, stats_ops
from .base import Operator, Record, SourceOperator, TaskContext


class UnknownOperator(LookupError):
    pass


@functools.cache
def implementations() -> dict[str, type[Operator]]:
    """Every implemented operator by name (built at first use: runtimes import this package)."""
    from ..runtimes import RUNTIMES

    out: dict[str, type[Operator]] = {}
    families = [builtin, io_ops, etl_ops, stats_ops, expr_ops, *RUNTIMES.values()]
    for family in families:
        ops: dict[str, type[Operator]] = family.OPERATORS
        clash = out.keys() & ops.keys()
        if clash:
            raise RuntimeError(f"operators implemented twice: {sorted(clash)}")
        out.update(ops)
    return out


def build(name: str, config: dict[str, Any]) -> Operator:
    """Instantiate an operator with its validated config.

    Raises ``UnknownOperator`` (or the Python runtime's ``OperatorLoadError``, a subclass
    of ``LookupError``) and pydantic's ``ValidationError``.
    """
    if name.startswith(PYTHON_PREFIX):
        from ..runtimes import python_runtime

        return python_runtime.load(name, config)
    info = lookup(name)
    impl = implementations().get(name)
    if info is None or impl is None:
        raise UnknownOperator(f"this agent has no operator {name!r}")
    return impl(info.config.model_validate(config))


__all__ = [
    "Operator",
    "Record",
    "SourceOperator",
    "TaskContext",
    "UnknownOperator",
    "build",
    "implementations",
]
