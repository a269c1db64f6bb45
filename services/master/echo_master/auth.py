"""Who may call what: the route -> role rule, and the ASGI layer that enforces it.

Every request to the REST API carries ``Authorization: Bearer <token>`` (an API token,
``tokens``), except on public routes. The rule, in one place (``AccessRules.required``):

1. public (no API token; the route authenticates itself or answers nothing secret):
   ``PUBLIC_PATHS`` (``/healthz``, ``/api/v1/enrol``), the web console's pages under
   ``PUBLIC_PREFIXES`` (``/ui``: they send a browser without a session to the login form)
   and any route declared with ``openapi_extra={"security": []}`` (which also tells OpenAPI
   clients). A public route must have a fixed path (no path parameters).
2. ``admin``, every method: ``/api/v1/tokens``, ``/api/v1/audit``, ``/api/v1/enrolments``
   (and everything under them)
3. ``viewer``: GET, HEAD, OPTIONS anywhere else (``/docs`` and ``/openapi.json`` included)
4. ``admin``, other methods: under ``/api/v1/devices`` (enrol, revoke, rotate)
5. ``viewer`` may also POST to ``VIEWER_WRITE_PATHS`` (a console login code for itself)
6. ``operator``: every other method anywhere (submit, stop, migrate, rebalance, ``/DAG``)

So a new route is never unprotected: it needs at least viewer (a read) or operator (a write).
Unknown paths need a token too (a 404 is for those who may look).

Answers: no token -> 401 ``WWW-Authenticate: Bearer``; a malformed header -> 401
``error="invalid_request"``; an unknown, expired or revoked token -> 401
``error="invalid_token"``; a role too low -> 403 naming the role needed; a token in the
query string (``token``, ``access_token``, ``api_key``) -> 400. Bodies are the API's error
shape ``{"detail", "errors": []}``. The caller's ``tokens.Principal`` is
``request.state.principal``. Mutating calls are audited (``audit``) once answered.

The web console's pages call the API with its session cookie instead (``console.sessions``),
only when no ``Authorization`` header is sent; a changing call made so must carry the
session's CSRF secret in ``X-ECHO-CSRF`` (403 without it). Its ``Session`` is
``request.state.session``.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import cookie_parser
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echo_shared.errors import EchoError

from .audit import AuditLog
from .console.sessions import COOKIE, CSRF_HEADER, ConsoleSessions, Session
from .errors import (
    AuditUnavailable,
    CsrfRefused,
    Forbidden,
    TokenInUrl,
    Unauthenticated,
    http_headers,
    http_status,
)
from .tokens import Principal, Role, TokenStore
from .views import error_response

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/healthz", "/api/v1/enrol"})
PUBLIC_PREFIXES = ("/ui",)
VIEWER_WRITE_PATHS = frozenset({"/api/v1/console/codes"})
ADMIN_PATHS = ("/api/v1/tokens", "/api/v1/audit", "/api/v1/enrolments")
ADMIN_WRITE_PATHS = ("/api/v1/devices",)
URL_TOKEN_PARAMS = frozenset({"token", "access_token", "api_key"})
BEARER_SCHEME = "bearer"  # the name of the security scheme in the OpenAPI document

# RFC 6750 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class AccessRules:
    """The route -> role rule (see the module docstring). ``routes`` is the app's route list,
    read once (on the first request) for routes declared public with ``security: []``."""

    def __init__(self, routes: Sequence[BaseRoute] = ()) -> None:
        self.routes = routes
        self._public: frozenset[str] | None = None

    @property
    def public_paths(self) -> frozenset[str]:
        if self._public is None:
            self._public = PUBLIC_PATHS | declared_public(self.routes)
        return self._public

    def required(self, method: str, path: str) -> Role | None:
        """The least role that may call ``method path``; None: public."""
        if path in self.public_paths or _under(path, PUBLIC_PREFIXES):
            return None
        if _under(path, ADMIN_PATHS):
            return Role.admin
        if method in READ_METHODS or path in VIEWER_WRITE_PATHS:
            return Role.viewer
        if _under(path, ADMIN_WRITE_PATHS):
            return Role.admin
        return Role.operator

    def route_of(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        """(route template, path parameters) of a request; the raw path if no route matches."""
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path), dict(scope.get("path_params") or {})
        for r in self.routes:
            match, child = r.matches(scope)
            if match is Match.FULL and hasattr(r, "path"):
                return str(r.path), dict(child.get("path_params") or {})
        return str(scope.get("path", "")), {}


def declared_public(routes: Sequence[BaseRoute]) -> frozenset[str]:
    """Paths of routes declared with ``openapi_extra={"security": []}``."""
    out = set()
    for r in routes:
        extra = getattr(r, "openapi_extra", None) or {}
        if extra.get("security") == []:
            path = str(getattr(r, "path", ""))
            if getattr(r, "param_convertors", None):
                raise ValueError(f"a public route needs a fixed path: {path} has parameters")
            out.add(path)
    return frozenset(out)


def bearer_token(scope: Scope) -> str:
    """The token of the request's ``Authorization: Bearer`` header, or ``Unauthenticated``."""
    values = [v for k, v in scope["headers"] if k == b"authorization"]
    if not values:
        raise Unauthenticated("this API needs a token: send Authorization: Bearer <token>")
    if len(values) > 1:
        raise Unauthenticated("more than one Authorization header", error="invalid_request")
    try:
        value = values[0].decode("ascii")
    except UnicodeDecodeError:
        raise Unauthenticated("malformed Authorization header: not ASCII", error="invalid_request") from None
    parts = value.split()
    if not parts or parts[0].lower() != "bearer":
        scheme = parts[0][:20] if parts else "(empty)"
        raise Unauthenticated(
            f"the API takes Bearer tokens, not {scheme}: send Authorization: Bearer <token>",
            error="invalid_request",
        )
    if len(parts) != 2:
        what = "no token" if len(parts) == 1 else "more than one token"
        raise Unauthenticated(
            f"malformed Authorization header ({what}): send Authorization: Bearer <token>",
            error="invalid_request",
        )
    if not _B64TOKEN.fullmatch(parts[1]):
        raise Unauthenticated(
            "malformed Authorization header: the token has characters a token cannot have",
            error="invalid_request",
        )
    return str(parts[1])


def session_cookie(scope: Scope) -> str | None:
    """The console's session cookie, when the request has no ``Authorization`` header."""
    cookie = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            return None
        if k == b"cookie":
            cookie = v
    if cookie is None:
        return None
    return cookie_parser(cookie.decode("latin-1")).get(COOKIE) or None


def check_csrf(scope: Scope, session: Session) -> None:
    sent = next((v for k, v in scope["headers"] if k == CSRF_HEADER.encode()), b"")
    if not hmac.compare_digest(sent, session.csrf.encode()):
        raise CsrfRefused(
            "a console request that changes something needs the session's X-ECHO-CSRF header",
            token_id=session.principal.token_id,
        )


def check_query(query_string: bytes) -> None:
    """Refuse a token in the URL (``TokenInUrl``)."""
    if not query_string:
        return
    for key, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key.lower() in URL_TOKEN_PARAMS:
            raise TokenInUrl(key)


class AuthLayer:
    """Pure ASGI: authenticate, authorise, then audit mutating calls (after the answer)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenStore,
        audit: AuditLog,
        rules: AccessRules,
        sessions: ConsoleSessions | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions
        self.audit = audit
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # no websocket routes: refuse before anything
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        principal: Principal | None = None
        try:
            check_query(scope.get("query_string", b""))
            needed = self.rules.required(method, scope["path"])
            if needed is None:
                await self.app(scope, receive, send)
                return
            principal = await self._principal(scope, method)
            if not principal.role.covers(needed):
                raise Forbidden(needed.value, principal.role.value, token_id=principal.token_id)
        except EchoError as e:
            status = http_status(e)
            token_id = getattr(e, "token_id", None)
            if token_id is not None and method not in READ_METHODS:
                role = principal.role.value if principal is not None else None
                await self._audit(scope, status, token_id, role)
            await error_response(status, str(e), headers=http_headers(e))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if method in READ_METHODS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            await self._audit(scope, 500, principal.token_id, principal.role.value)
            raise
        await self._audit(scope, status, principal.token_id, principal.role.value)

    async def _principal(self, scope: Scope, method: str) -> Principal:
        sid = session_cookie(scope) if self.sessions is not None else None
        if sid is None:
            return await self.tokens.verify(bearer_token(scope))
        assert self.sessions is not None
        session = await self.sessions.resolve(sid)
        if session is None:
            raise Unauthenticated("the console session has ended: log in again", error="invalid_token")
        if method not in READ_METHODS:
            check_csrf(scope, session)
        scope.setdefault("state", {})["session"] = session
        return session.principal

    async def _audit(self, scope: Scope, status: int, token_id: str, role: str | None) -> None:
        template, target = self.rules.route_of(scope)
        extra = (scope.get("state") or {}).get("audit_target")
        if extra:
            target.update(extra)
        client = scope.get("client")
        try:
            await self.audit.record(
                f"{scope['method']} {template}",
                result=status,
                token=token_id,
                role=role,
                target=target,
                client=client[0] if client else None,
            )
        except AuditUnavailable as e:
            log.warning("%s", e)


def declare_bearer(schema: dict[str, Any], rules: AccessRules) -> None:
    """Add the HTTP bearer scheme to an OpenAPI document and apply it to every operation
    (``security: []`` on public ones)."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token (echo_...): POST /api/v1/tokens, or the bootstrap admin token",
    }
    for path, ops in schema.get("paths", {}).items():
        public = path in rules.public_paths
        for op in ops.values():
            if not isinstance(op, dict):
                continue
            if public:
                op["security"] = []
                continue
            op.setdefault("security", [{BEARER_SCHEME: []}])
            responses = op.setdefault("responses", {})
            responses.setdefault("401", {"description": "no token, a malformed header, or a bad token"})
            responses.setdefault("403", {"description": "the token's role is too low for this call"})


__all__ = [
    "ADMIN_PATHS",
    "ADMIN_WRITE_PATHS",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "VIEWER_WRITE_PATHS",
    "AccessRules",
    "AuthLayer",
    "bearer_token",
    "check_query",
    "declare_bearer",
]
