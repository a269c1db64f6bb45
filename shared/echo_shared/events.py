"""The platform's events: what happened, to what, why, in which trace.

Scheduled (with the placement reason), deployed, task started / failed / restarted,
migrated (from, to, downtime), failed over, rebalanced, device unreachable / lost / back /
revoked, stopped. The service that makes a thing happen records it (master, migrator,
registry) in two capped Redis streams: every event (``Names.events_key``) and the
dataflow's own (``Names.dataflow_events_key``), read by the API
(``GET /api/v1/events``, ``GET /api/v1/dataflows/{id}/events``), ``echoctl get events``
and ``echoctl describe``. Recording never fails the caller: an event that cannot be
written (Redis down) is logged once per outage and dropped.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .names import Names
from .telemetry import current_trace_id

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000  # the platform's stream keeps about this many
MAX_DATAFLOW_EVENTS = 500  # each dataflow's stream


class EventKind(StrEnum):
    submitted = "submitted"
    scheduled = "scheduled"
    unplaceable = "unplaceable"
    deployed = "deployed"
    task_started = "task_started"
    task_failed = "task_failed"
    task_restarted = "task_restarted"
    migrated = "migrated"
    migration_failed = "migration_failed"
    failed_over = "failed_over"
    rebalanced = "rebalanced"
    dataflow_failed = "dataflow_failed"
    completed = "completed"
    stopped = "stopped"
    device_registered = "device_registered"
    device_unreachable = "device_unreachable"
    device_lost = "device_lost"
    device_back = "device_back"
    device_revoked = "device_revoked"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(default="", description="its position in the stream (time-ordered)")
    time: float
    kind: EventKind
    subject: str = Field(description="what it is about: 'dataflow df-…', 'task count', 'device fog-1'")
    message: str
    dataflow: str | None = None
    task: str | None = None
    device: str | None = None
    trace_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="figures: from, to, downtime_s…")

    def fields(self) -> dict[str, str]:
        return {"e": self.model_dump_json(exclude={"id"})}

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return cls.model_validate_json(fields["e"]).model_copy(update={"id": entry_id})


class EventLog:
    def __init__(self, redis: Any, names: Names) -> None:
        self.r = redis
        self.names = names
        self._failing = False

    async def record(
        self,
        kind: EventKind,
        message: str,
        *,
        dataflow: str | None = None,
        task: str | None = None,
        device: str | None = None,
        subject: str | None = None,
        trace_id: str | None = None,
        **data: Any,
    ) -> Event:
        if subject is None:
            subject = (
                f"task {task}"
                if task
                else f"device {device}"
                if device and not dataflow
                else f"dataflow {dataflow}"
            )
        event = Event(
            time=time.time(),
            kind=kind,
            subject=subject,
            message=message,
            dataflow=dataflow,
            task=task,
            device=device,
            trace_id=trace_id or current_trace_id(),
            data=data,
        )
        try:
            async with self.r.pipeline(transaction=False) as p:
                p.xadd(self.names.events_key, event.fields(), maxlen=MAX_EVENTS, approximate=True)
                if dataflow:
                    key = self.names.dataflow_events_key(dataflow)
                    p.xadd(key, event.fields(), maxlen=MAX_DATAFLOW_EVENTS, approximate=True)
                ids = await p.execute()
            event.id = str(ids[0])
            if self._failing:
                log.info("events are recorded again")
                self._failing = False
        except Exception as e:  # an event is worth less than the work it describes
            if not self._failing:
                log.warning(
                    "cannot record events (%s: %s); dropping them until Redis answers", type(e).__name__, e
                )
                self._failing = True
        return event

    async def read(
        self,
        *,
        dataflow: str | None = None,
        device: str | None = None,
        since: float | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The newest ``limit`` events (oldest first), of a dataflow or all; ``device``: only
        those about that device; ``since``: at or after that time; ``after``: after that id."""
        key = self.names.dataflow_events_key(dataflow) if dataflow else self.names.events_key
        low = f"({after}" if after else (f"{int(since * 1000)}-0" if since is not None else "-")
        out: list[Event] = []
        high = "+"
        while len(out) < limit:
            batch = await self.r.xrevrange(key, max=high, min=low, count=max(limit * 2, 100))
            if not batch:
                break
            for entry_id, fields in batch:
                ev = Event.from_entry(str(entry_id), {str(k): str(v) for k, v in fields.items()})
                if device is None or ev.device == device:
                    out.append(ev)
                    if len(out) >= limit:
                        break
            last = str(batch[-1][0])
            if len(batch) < max(limit * 2, 100):
                break
            high = f"({last}"
        out.reverse()
        return out
