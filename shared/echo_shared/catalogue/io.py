"""Catalogue entries of the io operators (filled in by their implementation work)."""

from __future__ import annotations

from .base import OperatorInfo

CATALOGUE: dict[str, OperatorInfo] = {}
