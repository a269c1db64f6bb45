"""The console's live feed: ``GET /api/v1/live?topics=...`` as Server-Sent Events.

Topics (comma-separated): ``devices`` (the fleet), ``dataflows`` (the list), ``dataflow:ID``
(one dataflow's view, its migrations and its new events), ``events`` (the platform's new
events). Each SSE event is named after what it carries (``devices``, ``dataflows``,
``dataflow``, ``migrations``, ``event``) and its data is the same JSON the REST API returns;
a snapshot is sent when it changed since the last one (looked at every ``PERIOD`` s). A
read that fails (a broker or Redis down) is skipped and tried again, so the feed outlives an
outage; the page shows the last figures. Viewer role (like any GET); not in the OpenAPI
document (a stream, not a document).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from echo_shared.errors import EchoError, NotFoundError, Problem, SpecError
from echo_shared.events import EventLog
from echo_shared.messages import MigrationListReply, MigrationListRequest
from echo_shared.registry_client import list_devices

from ..context import ApiContext
from ..migrations_api import ask_migrator
from ..views import dataflow_view

log = logging.getLogger(__name__)

PERIOD = 1.0
KEEPALIVE = 15.0
TOPICS = ("devices", "dataflows", "events")


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def parse_topics(raw: str) -> tuple[set[str], str | None]:
    topics: set[str] = set()
    dataflow = None
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if part.startswith("dataflow:") and len(part) > len("dataflow:"):
            dataflow = part.split(":", 1)[1]
        elif part in TOPICS:
            topics.add(part)
        else:
            known = ", ".join((*TOPICS, "dataflow:ID"))
            raise SpecError(
                [Problem("query.topics", f"unknown topic {part!r}; topics are {known}", "value_error")]
            )
    if not topics and dataflow is None:
        raise SpecError([Problem("query.topics", "name at least one topic", "missing")])
    return topics, dataflow


class Feed:
    """One client's feed: what it last got, to send only changes."""

    def __init__(self, ctx: ApiContext, topics: set[str], dataflow: str | None) -> None:
        self.ctx = ctx
        self.topics = topics
        self.dataflow = dataflow
        self.events = EventLog(ctx.redis, ctx.names)
        self.last: dict[str, bytes] = {}
        self.after: str | None = None  # the last event id sent
        self.failing: set[str] = set()

    async def _read(self, what: str, read: Callable[[], Awaitable[Any]]) -> Any:
        try:
            got = await read()
        except EchoError as e:  # NotFound passes through: the dataflow is gone
            if isinstance(e, NotFoundError):
                raise
            if what not in self.failing:
                self.failing.add(what)
                log.info("live feed: cannot read %s (%s); the console keeps its last figures", what, e)
            return None
        except Exception as e:  # Redis errors are not EchoErrors
            if what not in self.failing:
                self.failing.add(what)
                log.info("live feed: cannot read %s (%s: %s)", what, type(e).__name__, e)
            return None
        self.failing.discard(what)
        return got

    def _changed(self, name: str, payload: bytes) -> bool:
        if self.last.get(name) == payload:
            return False
        self.last[name] = payload
        return True

    async def snapshot(self) -> list[bytes]:
        ctx = self.ctx
        out: list[bytes] = []
        if "devices" in self.topics:
            devices = await self._read("devices", lambda: list_devices(ctx.bus, ctx.names))
            if devices is not None:
                data = orjson.dumps([d.model_dump(mode="json") for d in devices])
                if self._changed("devices", data):
                    out.append(b"event: devices\ndata: " + data + b"\n\n")
        if "dataflows" in self.topics:
            dfs = await self._read("dataflows", ctx.store.all)
            if dfs is not None:
                data = orjson.dumps([dataflow_view(df).model_dump(mode="json", by_alias=True) for df in dfs])
                if self._changed("dataflows", data):
                    out.append(b"event: dataflows\ndata: " + data + b"\n\n")
        if self.dataflow is not None:
            df_id = self.dataflow
            df = await self._read("dataflow", lambda: ctx.store.get(df_id))
            if df is not None:
                data = orjson.dumps(dataflow_view(df).model_dump(mode="json", by_alias=True))
                if self._changed("dataflow", data):
                    out.append(b"event: dataflow\ndata: " + data + b"\n\n")
            reply = await self._read(
                "migrations",
                lambda: ask_migrator(
                    ctx,
                    ctx.names.migrator_list,
                    MigrationListRequest(dataflow=df_id, limit=50),
                    MigrationListReply,
                ),
            )
            if reply is not None:
                data = orjson.dumps([m.model_dump(mode="json") for m in reply.migrations])
                if self._changed("migrations", data):
                    out.append(b"event: migrations\ndata: " + data + b"\n\n")
        if "events" in self.topics or self.dataflow is not None:
            out.extend(await self._new_events())
        return out

    async def _new_events(self) -> list[bytes]:
        if self.after is None:  # start from now: the page read the history over REST
            self.after = f"{int(time.time() * 1000)}-0"
        after = self.after
        got = await self._read(
            "events", lambda: self.events.read(dataflow=self.dataflow, after=after, limit=200)
        )
        out = []
        for ev in got or []:
            self.after = ev.id
            out.append(sse("event", ev.model_dump(mode="json")))
        return out


async def stream(feed: Feed, request: Request) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        try:
            chunks = await feed.snapshot()
        except NotFoundError as e:
            yield sse("gone", {"detail": str(e)})
            return
        for chunk in chunks:
            yield chunk
        if chunks:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(PERIOD)  # the feed's pace: one look per period


def live_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/live", include_in_schema=False)
    async def live(
        request: Request, topics: str = Query(..., description="devices, dataflows, events, dataflow:ID")
    ) -> StreamingResponse:
        wanted, dataflow = parse_topics(topics)
        if dataflow is not None:
            await ctx.store.get(dataflow)  # 404 at once for an unknown dataflow
        return StreamingResponse(
            stream(Feed(ctx, wanted, dataflow), request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router
