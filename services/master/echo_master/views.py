"""What the REST API returns: response models, the dataflow view, error bodies."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from echo_shared.errors import Problem
from echo_shared.models import DataflowState, DesiredState

from .store import Dataflow


class ErrorItem(BaseModel):
    loc: str = Field(examples=["tasks[2].operator"])
    msg: str
    type: str
    line: int | None = Field(default=None, description="the line of a submitted spec it is at (1-based)")
    column: int | None = Field(default=None, description="its column (1-based)")


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


class DataflowCreated(BaseModel):
    id: str
    state: DataflowState


class TaskView(BaseModel):
    id: str
    operator: str
    device: str | None
    state: str
    generation: int
    reason: str = ""
    placement_reason: str = ""
    records_in: int = 0
    records_out: int = 0
    rate_out: float = Field(default=0.0, description="records/s it emitted, as last reported")


class EdgeView(BaseModel):
    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from")
    to: str
    model: str
    transport: str | None = None
    topic: str | None = None
    rate: float = Field(default=0.0, description="records/s its producer emits, as last reported")
    messages: int = Field(default=0, description="messages its producer's current copy sent on it")
    spooled: int = Field(
        default=0, description="messages its producer's copy wrote to its on-disk spool (broker out of reach)"
    )
    spool_bytes: int = Field(default=0, description="bytes its producer's spool holds now")
    dropped: int = Field(default=0, description="records its producer's spool dropped (full or too old)")


class DataflowView(BaseModel):
    id: str
    name: str
    desired: DesiredState
    state: DataflowState
    reason: str = ""
    created_at: float
    updated_at: float
    tasks: list[TaskView]
    edges: list[EdgeView]
    trace_id: str | None = Field(default=None, description="the trace of its submission and deployment")


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def dataflow_view(df: Dataflow) -> DataflowView:
    channels = {(c.from_task, c.to_task): c for c in (df.placement.channels if df.placement else [])}
    tasks = []
    for t in df.effective.tasks:  # the user's tasks, then any relay the placement added
        rec = df.tasks.get(t.id)
        if rec is None:
            continue
        tasks.append(
            TaskView(
                id=t.id,
                operator=t.operator,
                device=rec.device,
                state=rec.state.value,
                generation=rec.generation,
                reason=rec.reason,
                placement_reason=rec.placement_reason,
                records_in=rec.records_in,
                records_out=rec.records_out,
                rate_out=rec.rate_out,
            )
        )
    edges = []
    for e in df.effective.edges:
        ch = channels.get((e.from_, e.to))
        producer = df.tasks.get(e.from_)
        sent = producer.channels.get(e.to) if producer is not None else None
        edges.append(
            EdgeView(
                from_=e.from_,
                to=e.to,
                model=e.model.value,
                transport=ch.transport if ch else None,
                topic=ch.topic if ch else None,
                rate=producer.rate_out if producer is not None else 0.0,
                messages=sent.messages if sent is not None else 0,
                spooled=sent.spooled if sent is not None else 0,
                spool_bytes=sent.spool_bytes if sent is not None else 0,
                dropped=sent.dropped if sent is not None else 0,
            )
        )
    return DataflowView(
        id=df.id,
        name=df.name,
        desired=df.desired,
        state=df.state,
        reason=df.reason,
        created_at=df.created_at,
        updated_at=df.updated_at,
        tasks=tasks,
        edges=edges,
        trace_id=trace_id_of(df.traceparent),
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 503)
}

SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DataflowSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/DataflowSpec"}},
        },
    }
}


def error_response(
    status: int,
    detail: str,
    problems: list[Problem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=[ErrorItem(**p.as_dict()) for p in problems or []])
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers or None)
