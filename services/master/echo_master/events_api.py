"""REST for the platform's events (``echo_shared.events``): what happened, and why.

- ``GET /api/v1/events[?device=&since=&after=&limit=]`` -> the newest events, oldest first
- ``GET /api/v1/dataflows/{id}/events[?since=&after=&limit=]`` -> one dataflow's
``since``: a time (Unix seconds or ISO 8601) or an age (``90s``, ``10m``, ``2h``, ``1d``);
``after``: an event id (follow new events: pass the last id you have).
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from echo_shared.events import Event, EventLog

from .context import ApiContext
from .views import ERRORS

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def invalid(field: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": msg, "type": "value_error"}])


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """A time (Unix seconds, ISO 8601) or an age before now (``10m``); None: no bound."""
    if value is None or value == "":
        return None
    text = value.strip()
    if m := _AGE.match(text):
        return (now or time.time()) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise invalid(
            "since", f"{value!r} is neither a time (Unix seconds, ISO 8601) nor an age such as 10m"
        ) from None


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
