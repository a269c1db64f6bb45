"""The REST gateway (FastAPI): dataflows, devices, health. OpenAPI at ``/docs``.

Errors are mapped to HTTP codes in one place (``errors.http_status``); every error body
is ``{"detail": "...", "errors": [{"loc": "tasks[2].operator", "msg": "...", "type": "..."}]}``
and never carries a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from echo_shared import __version__
from echo_shared.errors import EchoError, NotFoundError, Problem, SpecError
from echo_shared.messages import (
    DeviceGetReply,
    DeviceGetRequest,
    DeviceListReply,
    DeviceListRequest,
    ValidateReply,
    ValidateRequest,
)
from echo_shared.models import DataflowSpec, DataflowState, DesiredState, DeviceRecord
from echo_shared.mqtt import MqttClient
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.operators import join_loc
from echo_shared.telemetry import inject, tracer

from .errors import BodyTooLarge, http_status
from .reconciling import Reconciler
from .settings import MasterSettings
from .specs import read_spec
from .store import Dataflow, DataflowStore

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ response models


class ErrorItem(BaseModel):
    loc: str = Field(examples=["tasks[2].operator"])
    msg: str
    type: str


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


class EdgeView(BaseModel):
    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from")
    to: str
    model: str
    transport: str | None = None
    topic: str | None = None


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


def dataflow_view(df: Dataflow) -> DataflowView:
    channels = {(c.from_task, c.to_task): c for c in (df.placement.channels if df.placement else [])}
    tasks = []
    for t in df.spec.tasks:
        rec = df.tasks[t.id]
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
            )
        )
    edges = []
    for e in df.spec.edges:
        ch = channels.get((e.from_, e.to))
        edges.append(
            EdgeView(
                from_=e.from_,
                to=e.to,
                model=e.model.value,
                transport=ch.transport if ch else None,
                topic=ch.topic if ch else None,
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
    )


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 413, 415, 422, 503)}

SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DataflowSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/DataflowSpec"}},
        },
    }
}


@dataclass
class ApiContext:
    settings: MasterSettings
    names: Names
    store: DataflowStore
    reconciler: Reconciler
    bus: NatsBus
    redis: aioredis.Redis
    mqtt: MqttClient


def error_response(status: int, detail: str, problems: list[Problem] | None = None) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=[ErrorItem(**p.as_dict()) for p in problems or []])
    return JSONResponse(status_code=status, content=body.model_dump())


def create_api(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="ECHO",
        version=__version__,
        description="Orchestrates dataflow applications across edge, fog and cloud devices.",
        docs_url="/docs",
    )
    trace = tracer("echo.master.api")

    @app.exception_handler(EchoError)
    async def on_echo_error(_req: Request, e: EchoError) -> JSONResponse:
        if isinstance(e, SpecError):
            return error_response(422, "invalid dataflow spec", e.problems)
        return error_response(http_status(e), str(e))

    @app.exception_handler(RequestValidationError)
    async def on_validation(_req: Request, e: RequestValidationError) -> JSONResponse:
        problems = [Problem(join_loc("", err["loc"]), err["msg"], err["type"]) for err in e.errors()]
        return error_response(422, "invalid request", problems)

    @app.middleware("http")
    async def no_stack_traces(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # a catch-all here, not an exception handler: Starlette re-raises after those,
        # which logs a second time and drops the client's keep-alive connection
        try:
            return await call_next(request)
        except Exception as e:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(500, f"internal error ({type(e).__name__}); see the master's log")

    # -------------------------------------------------------------------- dataflows

    @app.post(
        "/api/v1/dataflows",
        status_code=201,
        response_model=DataflowCreated,
        responses=ERRORS,
        openapi_extra=SPEC_BODY,
        summary="Submit a dataflow (JSON, or YAML with Content-Type: application/yaml)",
    )
    async def submit(request: Request) -> DataflowCreated:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > ctx.settings.max_body_bytes:
            raise BodyTooLarge(f"body of {length} bytes exceeds {ctx.settings.max_body_bytes}")
        body = await request.body()
        if len(body) > ctx.settings.max_body_bytes:
            raise BodyTooLarge(f"body of {len(body)} bytes exceeds {ctx.settings.max_body_bytes}")
        with trace.start_as_current_span("submit dataflow") as span:
            spec = read_spec(body, request.headers.get("content-type"))
            span.set_attribute("echo.dataflow.name", spec.name)
            reply = await ctx.bus.request(
                ctx.names.scheduler_validate,
                ValidateRequest(spec=spec),
                ValidateReply,
                timeout=ctx.settings.scheduler_timeout,
            )
            if not reply.ok:
                raise SpecError([Problem(**p) for p in reply.problems])
            df_id = await ctx.store.create(spec, traceparent=inject().get("traceparent", ""))
            span.set_attribute("echo.dataflow", df_id)
        ctx.reconciler.kick(df_id)
        return DataflowCreated(id=df_id, state=DataflowState.pending)

    @app.get("/api/v1/dataflows", response_model=list[DataflowView], summary="List dataflows")
    async def list_dataflows() -> list[DataflowView]:
        return [dataflow_view(df) for df in await ctx.store.all()]

    @app.get("/api/v1/dataflows/{df_id}", response_model=DataflowView, responses=ERRORS)
    async def get_dataflow(df_id: str) -> DataflowView:
        return dataflow_view(await ctx.store.get(df_id))

    @app.delete(
        "/api/v1/dataflows/{df_id}",
        response_model=DataflowView,
        responses={**ERRORS, 202: {"model": DataflowView, "description": "still stopping"}},
        summary="Stop a dataflow: every task on every device",
    )
    async def stop_dataflow(df_id: str) -> JSONResponse:
        await ctx.store.set_desired(df_id, DesiredState.stopped)
        ctx.reconciler.kick(df_id)
        df = await ctx.reconciler.wait_for(df_id, {DataflowState.stopped}, ctx.settings.stop_wait)
        status = 200 if df.state is DataflowState.stopped else 202
        return JSONResponse(
            status_code=status, content=dataflow_view(df).model_dump(mode="json", by_alias=True)
        )

    # -------------------------------------------------------------------- devices

    @app.get("/api/v1/devices", response_model=list[DeviceRecord], summary="List devices")
    async def list_devices() -> list[DeviceRecord]:
        reply = await ctx.bus.request(ctx.names.registry_list, DeviceListRequest(), DeviceListReply)
        return reply.devices

    @app.get("/api/v1/devices/{device_id}", response_model=DeviceRecord, responses=ERRORS)
    async def get_device(device_id: str) -> DeviceRecord:
        reply = await ctx.bus.request(
            ctx.names.registry_get, DeviceGetRequest(device=device_id), DeviceGetReply
        )
        if reply.device is None:
            raise NotFoundError("device", device_id)
        return reply.device

    # -------------------------------------------------------------------- health

    @app.get("/healthz", summary="Liveness and broker connectivity")
    async def healthz() -> JSONResponse:
        checks = {"nats": ctx.bus.nc.is_connected, "mqtt": ctx.mqtt.connected}
        try:
            checks["redis"] = bool(await ctx.redis.ping())
        except Exception:
            checks["redis"] = False
        ok = all(checks.values())
        return JSONResponse(
            status_code=200 if ok else 503, content={"status": "ok" if ok else "degraded", **checks}
        )

    from .hypercat import hypercat_router
    from .legacy.routes import legacy_router

    app.include_router(legacy_router(ctx))
    app.include_router(hypercat_router(ctx))

    # make DataflowSpec part of the OpenAPI components (the request body refers to it)
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        defs = DataflowSpec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["DataflowSpec"] = defs
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
