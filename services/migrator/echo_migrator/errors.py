"""Migrator errors."""

from __future__ import annotations

from echo_shared.errors import RetryableError


class EventStreamUnavailable(RetryableError):
    pass
