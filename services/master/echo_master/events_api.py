"""REST for the platform's events (``echo_shared.events``): what happened, and why.

- ``GET /api/v1/events[?device=&since=&after=&limit=]`` -> the newest events, oldest first
- ``GET /api/v1/dataflows/{id}/events[?since=&after=&limit=]`` -> one dataflow's
``since``: a time (Unix seconds or ISO 8601) or an age (``90s``, ``10m``, ``2h``, ``1d``);
``after``: an event id (follow new events: pass the last id you have).
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from echo_shared.events import Event, EventLog

from . import audit
from .context import ApiContext
from .tokens import parse_ttl
from .views import ERRORS

_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def invalid(field: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": msg, "type": "value_error"}])


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """A time (Unix seconds; ISO 8601, no zone = UTC, as the audit trail reads it) or an age
    before now (``10m``, as token lifetimes are written); None: no bound."""
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return (now or time.time()) - parse_ttl(text)
    except ValueError:
        return audit.parse_since(text)  # else a 422 naming query.since


def check_after(after: str | None) -> str | None:
    if after is not None and not _ID.match(after):
        raise invalid("after", f"{after!r} is not an event id (such as 1733300000000-0)")
    return after


def events_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    log = EventLog(ctx.redis, ctx.names)

    @router.get(
        "/api/v1/events", response_model=list[Event], responses=ERRORS, summary="The platform's events"
    )
    async def list_events(
        device: str | None = Query(None, description="only events about this device"),
        since: str | None = Query(None, description="a time (Unix seconds, ISO 8601) or an age (10m)"),
        after: str | None = Query(None, description="only events after this id (to follow)"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[Event]:
        return await log.read(device=device, since=parse_since(since), after=check_after(after), limit=limit)

    @router.get(
        "/api/v1/dataflows/{df_id}/events",
        response_model=list[Event],
        responses=ERRORS,
        summary="One dataflow's events",
    )
    async def dataflow_events(
        df_id: str,
        since: str | None = Query(None, description="a time (Unix seconds, ISO 8601) or an age (10m)"),
        after: str | None = Query(None, description="only events after this id (to follow)"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[Event]:
        await ctx.store.get(df_id)  # 404 for an unknown dataflow
        return await log.read(dataflow=df_id, since=parse_since(since), after=check_after(after), limit=limit)

    return router
