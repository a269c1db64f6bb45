"""Typed errors shared by every service.

The retry policy lives in the type: a ``RetryableError`` may succeed if tried again
after ``delay`` seconds; a ``PermanentError`` will not. HTTP codes are mapped once, at
the master's gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class EchoError(Exception):
    """Base of every ECHO error."""


class RetryableError(EchoError):
    def __init__(self, message: str, *, delay: float = 0.5) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(EchoError):
    pass


@dataclass(frozen=True)
class Problem:
    """One problem in user input: where it is (``tasks[2].operator``) and what it is."""

    loc: str
    msg: str
    type: str = "value_error"
    line: int | None = None  # where in the submitted text (1-based), when known
    column: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Problem:
        """A problem from its ``as_dict`` form (as it crosses the bus)."""
        return cls(d["loc"], d["msg"], d.get("type", "value_error"), d.get("line"), d.get("column"))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loc": self.loc, "msg": self.msg, "type": self.type}
        if self.line is not None:
            out["line"] = self.line
            out["column"] = self.column
        return out


@dataclass
class SpecError(PermanentError):
    """A dataflow spec (or request) is invalid; carries every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, "; ".join(f"{p.loc}: {p.msg}" for p in self.problems))


class NotFoundError(PermanentError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class PlacementError(PermanentError):
    """No device can host a task, with the reason."""


class BusError(RetryableError):
    """A broker could not be reached or did not answer in time."""


class BrokerUnavailable(BusError):
    pass


class RequestTimeout(BusError):
    pass


class DependencyUnavailable(BusError):
    """A dependency (``redis``, ``nats``, ``mqtt``) is out of reach: try again later (HTTP 503)."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))
        self.dependency = dependency


class ConflictError(RetryableError):
    """A versioned write lost a race; read again and retry."""
