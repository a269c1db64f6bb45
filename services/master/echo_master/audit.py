"""The audit trail: who changed what, when, from where, and what came of it.

A capped Redis stream (``names.audit_key``, ``XADD ... MAXLEN ~ N``). The REST gateway
(``auth.AuthLayer``) records every mutating call (any method but GET, HEAD, OPTIONS) whose
token is known, refused ones (401, 403) included; other parts of the master record events
that are not HTTP calls::

    await audit.record("device.revoke", result="ok", target={"device": "edge-7"},
                       token=principal.token_id, role=principal.role)

A route adds to the target of its own call with ``audit_target(request, dataflow=df_id)``
(e.g. the id it just created). ``GET /api/v1/audit?limit=100&since=<ISO time>`` (admin)
answers newest first.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from echo_shared.errors import Problem, SpecError
from echo_shared.names import Names

from .errors import AuditUnavailable
from .views import ERRORS

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000


class AuditEntry(BaseModel):
    id: str = Field(description="the stream entry id (milliseconds-sequence)")
    time: str = Field(description="ISO 8601 UTC, milliseconds")
    token: str | None = Field(default=None, description="the API token id, if one was presented and known")
    role: str | None = None
    action: str = Field(description="method and route template, or an event name (device.revoke)")
    target: dict[str, str] = Field(default_factory=dict, description="path parameters and ids acted on")
    result: int | str = Field(description="the HTTP status, or an event's outcome")
    client: str | None = Field(default=None, description="the caller's address")


def _iso_ms(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(value: str) -> float:
    """An ISO 8601 time (``2025-01-31T12:00:00Z``; no zone = UTC) -> epoch seconds."""
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise SpecError(
            [Problem("query.since", f"{value!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00Z)")]
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def audit_target(request: Request, **ids: str) -> None:
    """Add ids to the audit target of the current call (recorded once it is answered)."""
    current = getattr(request.state, "audit_target", None) or {}
    request.state.audit_target = {**current, **ids}


class AuditLog:
    """Append to and read the audit stream. ``record`` raises ``AuditUnavailable`` when Redis
    does not take the entry (callers decide whether that stops what they do)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        names: Names,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # redis-py types answers as bytes | str; the master's client decodes (str)
        self.redis: Any = redis
        self.key = names.audit_key
        self.max_entries = max_entries
        self.clock = clock

    async def record(
        self,
        action: str,
        *,
        result: int | str,
        token: str | None = None,
        role: str | None = None,
        target: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> str:
        """Append one entry; returns its stream id."""
        fields = {
            "time": _iso_ms(self.clock()),
            "token": token or "",
            "role": str(role or ""),
            "action": action,
            "target": orjson.dumps({str(k): str(v) for k, v in (target or {}).items()}).decode(),
            "result": str(result),
            "client": client or "",
        }
        try:
            entry_id: str = await self.redis.xadd(self.key, fields, maxlen=self.max_entries, approximate=True)
        except RedisError as e:
            raise AuditUnavailable(f"the audit trail did not take {action!r}: {e}") from e
        return entry_id

    async def recent(self, *, limit: int = 100, since: float | None = None) -> list[AuditEntry]:
        """Newest first, at most ``limit``, not older than ``since`` (epoch seconds)."""
        low = str(max(0, int(since * 1000))) if since is not None else "-"
        try:
            raw = await self.redis.xrevrange(self.key, max="+", min=low, count=limit)
        except RedisError as e:
            raise AuditUnavailable(f"cannot read the audit trail: {e}") from e
        return [_entry(entry_id, fields) for entry_id, fields in raw]


def _entry(entry_id: str, f: dict[str, str]) -> AuditEntry:
    try:
        target = orjson.loads(f.get("target") or "{}")
    except orjson.JSONDecodeError:
        target = {}
    result = f.get("result", "")
    return AuditEntry(
        id=entry_id,
        time=f.get("time", ""),
        token=f.get("token") or None,
        role=f.get("role") or None,
        action=f.get("action", ""),
        target=target if isinstance(target, dict) else {},
        result=int(result) if result.isdigit() else result,
        client=f.get("client") or None,
    )


def audit_router(audit: AuditLog) -> APIRouter:
    r = APIRouter(tags=["access"])

    @r.get(
        "/api/v1/audit",
        response_model=list[AuditEntry],
        responses=ERRORS,
        summary="The audit trail (admin): mutating calls and device events, newest first",
    )
    async def get_audit(
        limit: int = Query(100, ge=1, le=MAX_LIMIT, description="at most this many entries"),
        since: str | None = Query(None, description="only entries at or after this ISO 8601 time"),
    ) -> list[AuditEntry]:
        return await audit.recent(limit=limit, since=parse_since(since) if since else None)

    return r


__all__ = ["AuditEntry", "AuditLog", "audit_router", "audit_target", "parse_since"]
