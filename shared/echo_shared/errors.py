"""Typed errors shared by every service.

The retry policy lives in the type: a ``RetryableError`` may succeed if tried again
after ``delay`` seconds; a ``PermanentError`` will not. HTTP codes are mapped once, at
the master's gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def as_dict(self) -> dict[str, str]:
        return {"loc": self.loc, "msg": self.msg, "type": self.type}


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


class ConflictError(RetryableError):
    """A versioned write lost a race; read again and retry."""
