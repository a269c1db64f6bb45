"""The catalogue of built-in operators, one module per family.

The scheduler validates specs against it; the agent implements every entry under the
same name (``echo_agent.operators``). Each family module exports ``CATALOGUE``.
"""

from __future__ import annotations

from . import core, etl, expr, io, runtimes, stats
from .base import Kind, OperatorConfig, OperatorInfo, Role

CATALOGUE: dict[str, OperatorInfo] = {}
for _family in (core, io, etl, stats, expr, runtimes):
    _clash = CATALOGUE.keys() & _family.CATALOGUE.keys()
    if _clash:
        raise RuntimeError(f"operators defined twice: {sorted(_clash)}")
    CATALOGUE.update(_family.CATALOGUE)

__all__ = ["CATALOGUE", "Kind", "OperatorConfig", "OperatorInfo", "Role"]
