"""Outages of a dependency (a broker, Redis, another service), logged as state changes.

A loop that keeps trying something (a sweep that reads Redis, a consumer fetching from
JetStream) reports each attempt: ``outage.failed(e)`` logs once when the outage begins
(``redis unavailable: ConnectionError: ...``) and ``outage.ok()`` once when it ends, with how
long it lasted (``redis back after 4.2 s``), instead of a traceback per retry. ``Backoff``
spaces the retries (doubling up to a cap, reset on success).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from nats import errors as nats_errors

from .errors import BusError, DependencyUnavailable


class Outage:
    def __init__(
        self, what: str, logger: logging.Logger, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self.log = logger
        self.clock = clock
        self.since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, e: BaseException | str) -> None:
        """One failed attempt; logged only if it begins an outage."""
        self.failures += 1
        why = e if isinstance(e, str) else f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if self.since is None:
            self.since = self.clock()
            self.log.warning("%s unavailable (%s); retrying", self.what, why)
        else:
            self.log.debug("%s still unavailable (%s)", self.what, why)

    def ok(self) -> float | None:
        """A successful attempt; logs the end of an outage, returns its length (None: none)."""
        if self.since is None:
            return None
        lasted = self.clock() - self.since
        self.since = None
        self.log.warning(
            "%s back after %.1f s (%d failed attempt%s)",
            self.what,
            lasted,
            self.failures,
            "" if self.failures == 1 else "s",
        )
        self.failures = 0
        return lasted


class Backoff:
    """Retry delays: ``first``, doubling up to ``cap``; ``reset()`` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.current = first

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


def dependency_of(e: BaseException) -> str | None:
    """The dependency an exception says is out of reach (``redis``, ``nats``; ``bus``: another
    service did not answer), or None for any other error (a bug, bad input...)."""
    if isinstance(e, DependencyUnavailable):
        return e.dependency
    redis_errors = sys.modules.get("redis.exceptions")  # not imported: no Redis error can exist
    if redis_errors is not None and isinstance(
        e, redis_errors.ConnectionError | redis_errors.TimeoutError | redis_errors.BusyLoadingError
    ):
        return "redis"
    if isinstance(
        e,
        nats_errors.ConnectionClosedError
        | nats_errors.NoServersError
        | nats_errors.StaleConnectionError
        | nats_errors.OutboundBufferLimitError,
    ):
        return "nats"
    if isinstance(e, BusError):  # another service did not answer (its message says which)
        return "bus"
    return None
