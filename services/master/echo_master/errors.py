"""Master errors, and the one place where errors become HTTP status codes."""

from __future__ import annotations

from echo_shared.errors import (
    BusError,
    ConflictError,
    EchoError,
    NotFoundError,
    PermanentError,
    Problem,
    SpecError,
)


class UnsupportedMediaType(PermanentError):
    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"unsupported Content-Type {content_type!r}: send application/json or application/yaml"
        )


class BodyTooLarge(PermanentError):
    pass


class Refused(PermanentError):
    """Another service refused a request with an HTTP-like status (e.g. the migrator)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def http_status(err: EchoError) -> int:
    """HTTP status for a typed error (the gateway's single mapping)."""
    if isinstance(err, SpecError):
        return 422
    if isinstance(err, Refused):
        return err.status
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, UnsupportedMediaType):
        return 415
    if isinstance(err, BodyTooLarge):
        return 413
    if isinstance(err, ConflictError):
        return 409
    if isinstance(err, BusError):
        return 503
    return 400


__all__ = [
    "BodyTooLarge",
    "EchoError",
    "NotFoundError",
    "Problem",
    "Refused",
    "SpecError",
    "UnsupportedMediaType",
    "http_status",
]
