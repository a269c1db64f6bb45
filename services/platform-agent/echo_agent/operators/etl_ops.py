"""Implementations of the etl operators (catalogue: echo_shared.catalogue.etl)."""

from __future__ import annotations

from .base import Operator

OPERATORS: dict[str, type[Operator]] = {}
