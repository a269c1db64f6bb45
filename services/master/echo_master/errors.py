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


class AuthError(PermanentError):
    """The caller may not make this request (``auth``); ``token_id`` when its token is known."""

    def __init__(self, message: str, *, token_id: str | None = None) -> None:
        super().__init__(message)
        self.token_id = token_id


class Unauthenticated(AuthError):
    """No usable token: missing, malformed (``invalid_request``), or unknown, expired or revoked
    (``invalid_token``). RFC 6750: answered with ``WWW-Authenticate: Bearer [error="..."]``."""

    def __init__(self, message: str, *, error: str | None = None, token_id: str | None = None) -> None:
        super().__init__(message, token_id=token_id)
        self.error = error

    @property
    def challenge(self) -> str:
        return f'Bearer error="{self.error}"' if self.error else "Bearer"


class Forbidden(AuthError):
    """A valid token whose role is below the route's."""

    def __init__(self, needed: str, has: str, *, token_id: str | None = None) -> None:
        super().__init__(f"this needs the {needed} role; your token has {has}", token_id=token_id)
        self.needed = needed
        self.has = has


class TokenInUrl(AuthError):
    """A token in the query string: refused (URLs end up in logs and browser histories)."""

    def __init__(self, param: str) -> None:
        super().__init__(f"tokens go in the Authorization header, not the URL (query parameter {param!r})")
        self.param = param


class TokenStoreUnavailable(BusError):
    """Redis did not answer while a token was checked or changed."""


class LoginRefused(AuthError):
    """A console login that cannot go on: an unknown, expired or used code, or a bad token.
    The reason is shown on the login form."""


class CsrfRefused(AuthError):
    """A console (cookie) request that changes something without the session's CSRF header."""


class AuditUnavailable(BusError):
    """Redis did not take an audit record."""


class ApiTlsError(PermanentError):
    """HTTPS was asked for (``ECHO_API_TLS``) but its certificate or key is missing or unreadable."""


class ApiListenError(PermanentError):
    """The REST API cannot listen on its port (another process holds it)."""


def http_status(err: EchoError) -> int:
    """HTTP status for a typed error (the gateway's single mapping)."""
    if isinstance(err, SpecError):
        return 422
    if isinstance(err, Unauthenticated | LoginRefused):
        return 401
    if isinstance(err, Forbidden | CsrfRefused):
        return 403
    if isinstance(err, TokenInUrl):
        return 400
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


def http_headers(err: EchoError) -> dict[str, str]:
    """Headers a typed error's answer must carry (the bearer challenge of a 401)."""
    if isinstance(err, Unauthenticated):
        return {"WWW-Authenticate": err.challenge}
    return {}


__all__ = [
    "ApiTlsError",
    "AuditUnavailable",
    "AuthError",
    "BodyTooLarge",
    "CsrfRefused",
    "EchoError",
    "Forbidden",
    "LoginRefused",
    "NotFoundError",
    "Problem",
    "Refused",
    "SpecError",
    "TokenInUrl",
    "TokenStoreUnavailable",
    "Unauthenticated",
    "UnsupportedMediaType",
    "http_headers",
    "http_status",
]
