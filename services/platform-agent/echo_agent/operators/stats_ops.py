"""Implementations of the stats operators (catalogue: echo_shared.catalogue.stats)."""

from __future__ import annotations

from .base import Operator

OPERATORS: dict[str, type[Operator]] = {}
