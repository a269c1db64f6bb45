"""Implementations of the io operators (catalogue: echo_shared.catalogue.io)."""

from __future__ import annotations

from .base import Operator

OPERATORS: dict[str, type[Operator]] = {}
