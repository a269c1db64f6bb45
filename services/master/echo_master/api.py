"""The REST gateway (FastAPI): dataflows, devices, health. OpenAPI at ``/docs``.

Every route needs an API token (``Authorization: Bearer``) of a role the route allows,
except public ones (``/healthz``; see ``auth`` for the rule and how to declare a route
public); mutating calls are audited. Tokens: ``tokens``; audit trail: ``audit``.

Errors are mapped to HTTP codes in one place (``errors.http_status``); every error body
is ``{"detail": "...", "errors": [{"loc": "tasks[2].operator", "msg": "...", "type": "..."}]}``
and never carries a stack trace. The original ECHO API (``/DAG``) and the HyperCat
catalogue (``/cat``) are routers of their own (``legacy.routes``, ``hypercat``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echo_shared import __version__, registry_client
from echo_shared.errors import EchoError, NotFoundError, Problem, SpecError
from echo_shared.messages import DeviceGetReply, DeviceGetRequest
from echo_shared.models import DataflowSpec, DataflowState, DeviceRecord, Placement
from echo_shared.operators import join_loc
from echo_shared.outage import Outage, dependency_of

from . import submitting
from .audit import audit_router, audit_target
from .auth import AccessRules, AuthLayer, declare_bearer
from .body_limit import BodyLimit, read_body
from .console.live import live_router
from .console.pages import console_api_router, console_router
from .console.sessions import ConsoleSessions
from .context import ApiContext
from .errors import http_headers, http_status
from .events_api import events_router
from .hypercat import hypercat_router
from .legacy.routes import legacy_router
from .metrics import ApiMetrics
from .migrations_api import migrations_router
from .specs import locate, read_spec
from .tokens import tokens_router
from .views import (
    ERRORS,
    SPEC_BODY,
    DataflowCreated,
    DataflowView,
    ErrorBody,
    dataflow_view,
    error_response,
)

log = logging.getLogger(__name__)


class NoStackTraces:
    """Pure ASGI catch-all: an unexpected error becomes a JSON 500, never a stack trace.

    Not an exception handler (Starlette re-raises after those, which logs twice and drops
    the keep-alive connection) and not ``@app.middleware`` (its per-request cost is high).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.outages: dict[str, Outage] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            dep = dependency_of(e)
            if dep is None:
                log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            else:  # Redis or a broker out of reach: 503 naming it, logged once per outage
                self.outages.setdefault(dep, Outage(f"the API's {dep}", log)).failed(e)
            if started:
                raise
            if dep is not None:
                response = error_response(
                    503, f"{dep} is unavailable: try again shortly", headers={"Retry-After": "2"}
                )
            else:
                response = error_response(500, f"internal error ({type(e).__name__}); see the master's log")
            await response(scope, receive, send)
            return
        for outage in self.outages.values():
            outage.ok()


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def errors_as_sent(schema: dict[str, Any]) -> None:
    """Document every error as ECHO sends it: FastAPI declares its own 422 body
    (``HTTPValidationError``) on routes with parameters, but ECHO answers every error with
    ``ErrorBody``; and any route may refuse a body it cannot parse (400)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for defs in components["ErrorBody"].pop("$defs", {}).items():
        components.setdefault(*defs)
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            if not isinstance(op, dict):
                continue
            responses = op.setdefault("responses", {})
            responses.setdefault("400", {"description": "a body that cannot be parsed"})
            for code in ("400", "422"):
                if code in responses:
                    responses[code]["content"] = {"application/json": {"schema": ERROR_REF}}
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def create_api(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="ECHO",
        version=__version__,
        description="Orchestrates dataflow applications across edge, fog and cloud devices.",
        docs_url="/docs",
        # one server span per request (the root of a submission's trace); no per-function
        # spans, metrics or logs from FastAPI itself: they cost more than a request
        telemetry={"tracing": True, "operation_spans": False, "metrics": False, "logs": False},
    )

    @app.exception_handler(EchoError)
    async def on_echo_error(_req: Request, e: EchoError) -> JSONResponse:
        if isinstance(e, SpecError):
            return error_response(422, "invalid dataflow spec", e.problems)
        return error_response(http_status(e), str(e), headers=http_headers(e))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (a body it cannot parse: 400; no such route: 404; 405...)
        # in ECHO's error format, like every other error
        return error_response(e.status_code, str(e.detail), headers=dict(e.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def on_validation(_req: Request, e: RequestValidationError) -> JSONResponse:
        problems = [Problem(join_loc("", err["loc"]), err["msg"], err["type"]) for err in e.errors()]
        return error_response(422, "invalid request", problems)

    rules = AccessRules(app.router.routes)  # the same list: routers included later count too
    sessions = ConsoleSessions(
        ctx.redis, ctx.names, ctx.tokens, session_seconds=ctx.settings.console_session_seconds
    )
    app.add_middleware(AuthLayer, tokens=ctx.tokens, audit=ctx.audit, rules=rules, sessions=sessions)
    app.add_middleware(NoStackTraces)  # whatever fails below, no stack trace
    app.add_middleware(BodyLimit, max_bytes=ctx.settings.max_body_bytes)  # before any token check
    if ctx.metrics is not None:  # outermost: every answer counted, refusals and 500s too
        app.add_middleware(ApiMetrics, metrics=ctx.metrics, routes=app.router.routes)

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
        body = await read_body(request, ctx.settings.max_body_bytes)
        try:
            df_id = await submitting.submit(ctx, read_spec(body, request.headers.get("content-type")))
        except SpecError as e:
            raise SpecError(locate(body, e.problems)) from None
        audit_target(request, dataflow=df_id)
        return DataflowCreated(id=df_id, state=DataflowState.pending)

    @app.get("/api/v1/dataflows", response_model=list[DataflowView], summary="List dataflows")
    async def list_dataflows() -> list[DataflowView]:
        return [dataflow_view(df) for df in await ctx.store.all()]

    @app.get(
        "/api/v1/dataflows/{df_id}",
        response_model=DataflowView,
        responses=ERRORS,
        summary="One dataflow; with ?wait=, once it reaches one of those states (long poll)",
    )
    async def get_dataflow(
        df_id: str,
        wait: str | None = Query(
            None, description="comma-separated dataflow states: answer once the dataflow is in one of them"
        ),
        timeout: float = Query(10.0, ge=0, le=60, description="seconds to wait at most (then answer anyway)"),
    ) -> DataflowView:
        if not wait:
            return dataflow_view(await ctx.store.get(df_id))
        try:
            states = {DataflowState(w.strip()) for w in wait.split(",") if w.strip()}
        except ValueError as e:
            known = ", ".join(s.value for s in DataflowState)
            raise SpecError([Problem("query.wait", f"{e}; states are {known}", "value_error")]) from e
        await ctx.store.get(df_id)  # 404 at once for an unknown dataflow
        return dataflow_view(await ctx.reconciler.wait_for(df_id, states, timeout))

    @app.get(
        "/api/v1/dataflows/{df_id}/placement",
        response_model=Placement,
        responses=ERRORS,
        summary="Why each task runs where it runs: constraints met, cost terms, runner-up; each "
        "edge's channel and why",
    )
    async def get_placement(df_id: str) -> Placement:
        df = await ctx.store.get(df_id)
        if df.placement is None:
            raise NotFoundError("placement of dataflow", f"{df_id} (it is {df.state.value})")
        return df.placement

    @app.delete(
        "/api/v1/dataflows/{df_id}",
        response_model=DataflowView,
        responses={**ERRORS, 202: {"model": DataflowView, "description": "still stopping"}},
        summary="Stop a dataflow: every task on every device",
    )
    async def stop_dataflow(df_id: str) -> JSONResponse:
        df = await submitting.stop(ctx, df_id)
        status = 200 if df.state is DataflowState.stopped else 202
        return JSONResponse(
            status_code=status, content=dataflow_view(df).model_dump(mode="json", by_alias=True)
        )

    # -------------------------------------------------------------------- devices

    @app.get("/api/v1/devices", response_model=list[DeviceRecord], summary="List devices")
    async def list_devices() -> list[DeviceRecord]:
        return await registry_client.list_devices(ctx.bus, ctx.names)

    @app.get("/api/v1/devices/{device_id}", response_model=DeviceRecord, responses=ERRORS)
    async def get_device(device_id: str) -> DeviceRecord:
        reply = await ctx.bus.request(
            ctx.names.registry_get, DeviceGetRequest(device=device_id), DeviceGetReply
        )
        if reply.device is None:
            raise NotFoundError("device", device_id)
        return reply.device

    # -------------------------------------------------------------------- health

    boot_id = ctx.settings.boot_id  # `echoctl dev up` checks that the API it reports is its own

    @app.get(
        "/healthz",
        summary="Liveness (no token): ok (200) or degraded (503), which dependency is down, this "
        "process's boot id, and whether this replica leads (runs the reconciler)",
        openapi_extra={"security": []},
    )
    async def healthz() -> JSONResponse:
        deps = {"nats": ctx.bus.nc.is_connected, "mqtt": ctx.mqtt.connected, "redis": False}
        try:
            async with asyncio.timeout(1.0):
                deps["redis"] = bool(await ctx.redis.ping())
        except Exception:
            deps["redis"] = False
        ok = all(deps.values())
        return JSONResponse(
            status_code=200 if ok else 503,
            content={
                "status": "ok" if ok else "degraded",
                "dependencies": {k: "ok" if v else "down" for k, v in deps.items()},
                "boot_id": boot_id,
                "leader": ctx.reconciler.leading(),
            },
        )

    app.include_router(migrations_router(ctx))
    app.include_router(events_router(ctx))
    app.include_router(legacy_router(ctx))
    app.include_router(hypercat_router(ctx))
    app.include_router(tokens_router(ctx.tokens))
    app.include_router(audit_router(ctx.audit))
    app.include_router(console_api_router(ctx, sessions))
    app.include_router(live_router(ctx))
    app.include_router(console_router(ctx, sessions))

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
        declare_bearer(schema, rules)
        errors_as_sent(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
