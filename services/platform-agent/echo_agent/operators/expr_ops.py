"""Implementations of the expr operators (catalogue: echo_shared.catalogue.expr)."""

from __future__ import annotations

from .base import Operator

OPERATORS: dict[str, type[Operator]] = {}
