"""REST for migrations and rebalancing; the migrator runs them (NATS), the master fronts it.

- ``POST /api/v1/dataflows/{id}/tasks/{task}/migrate`` (body ``{"device": ID}`` or empty:
  the scheduler chooses) -> ``202 {"migration": MID}``
- ``GET /api/v1/migrations/{MID}`` -> the saga: state and each step with its timing
- ``GET /api/v1/migrations[?dataflow=]`` -> the latest migrations, newest first
- ``POST /api/v1/dataflows/{id}/rebalance`` -> ``202 {"migrations": [...], "moves": {task: device}}``
- ``GET /api/v1/rebalancing/decisions`` -> what the adaptive rebalancer decided, and why
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from echo_shared.errors import BusError, NotFoundError, Problem, SpecError
from echo_shared.messages import (
    DecisionListReply,
    DecisionListRequest,
    MigrateReply,
    MigrateRequest,
    Migration,
    MigrationGetReply,
    MigrationGetRequest,
    MigrationListReply,
    MigrationListRequest,
    MigrationOrigin,
    RebalanceDecision,
    RebalanceReply,
    RebalanceRequest,
)
from echo_shared.operators import join_loc

from .context import ApiContext
from .errors import Refused
from .views import ERRORS

MIGRATOR_TIMEOUT = 10.0
FINISHED = {"completed", "failed", "rolled_back"}


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(default=None, description="the target device; empty: the scheduler chooses")


class MigrationStarted(BaseModel):
    migration: str


class RebalanceStarted(BaseModel):
    migrations: list[str]
    moves: dict[str, str] = Field(description="task -> the device it moves to")


class MigratorUnavailable(BusError):
    pass


async def ask_migrator(ctx: ApiContext, subject: str, msg: Any, reply_type: type[Any]) -> Any:
    try:
        return await ctx.bus.request(subject, msg, reply_type, timeout=MIGRATOR_TIMEOUT)
    except BusError as e:
        raise MigratorUnavailable(f"the migrator did not answer: {e}") from e


def _raise(status: int, reason: str) -> None:
    if status == 422:
        raise SpecError([Problem("body.device", reason, "value_error")])
    raise Refused(status if 400 <= status < 600 else 400, reason)


async def start_migration(
    ctx: ApiContext, df_id: str, task: str, device: str | None, origin: MigrationOrigin = "api"
) -> str:
    df = await ctx.store.get(df_id)  # 404 for an unknown dataflow
    if task not in df.tasks:
        raise NotFoundError("task", f"{task} of dataflow {df_id}")
    reply: MigrateReply = await ask_migrator(
        ctx,
        ctx.names.migrator_migrate,
        MigrateRequest(
            dataflow=df_id, task=task, device=device, origin=origin, reason=f"requested ({origin})"
        ),
        MigrateReply,
    )
    if not reply.ok or reply.migration is None:
        _raise(reply.status, reply.reason)
    assert reply.migration is not None
    return reply.migration


async def start_rebalance(
    ctx: ApiContext, df_id: str, origin: MigrationOrigin = "rebalance"
) -> RebalanceReply:
    await ctx.store.get(df_id)
    reply: RebalanceReply = await ask_migrator(
        ctx, ctx.names.migrator_rebalance, RebalanceRequest(dataflow=df_id, origin=origin), RebalanceReply
    )
    if not reply.ok:
        _raise(reply.status, reply.reason)
    return reply


async def get_migration(ctx: ApiContext, mid: str) -> Migration:
    reply: MigrationGetReply = await ask_migrator(
        ctx, ctx.names.migrator_get, MigrationGetRequest(id=mid), MigrationGetReply
    )
    if not reply.ok or reply.migration is None:
        raise NotFoundError("migration", mid)
    return reply.migration


async def wait_migrations(ctx: ApiContext, mids: list[str], timeout: float) -> list[Migration]:
    """Poll until every migration finished (or the timeout): the original API answers late."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = [await get_migration(ctx, m) for m in mids]
        if all(m.state in FINISHED for m in got) or loop.time() >= deadline:
            return got
        await asyncio.sleep(0.1)  # polling the migrator: nothing to wait on across services


def migrations_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/v1/dataflows/{df_id}/tasks/{task}/migrate",
        status_code=202,
        response_model=MigrationStarted,
        responses=ERRORS,
        summary="Move one running task (with its state) to a device, or where the scheduler chooses",
    )
    async def migrate(df_id: str, task: str, request: Request) -> MigrationStarted:
        body = await request.body()
        device: str | None = None
        if body.strip():
            try:
                device = MigrateBody.model_validate_json(body).device
            except ValidationError as e:
                problems = [
                    Problem(join_loc("body", err["loc"]), err["msg"], err["type"]) for err in e.errors()
                ]
                raise SpecError(problems) from e
        return MigrationStarted(migration=await start_migration(ctx, df_id, task, device))

    @router.get(
        "/api/v1/migrations/{mid}",
        response_model=Migration,
        responses=ERRORS,
        summary="A migration: its state and each step with its timing",
    )
    async def migration(mid: str) -> Migration:
        return await get_migration(ctx, mid)

    @router.get("/api/v1/migrations", response_model=list[Migration], summary="The latest migrations")
    async def migrations(
        dataflow: str | None = Query(None, description="only this dataflow's"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[Migration]:
        reply: MigrationListReply = await ask_migrator(
            ctx,
            ctx.names.migrator_list,
            MigrationListRequest(dataflow=dataflow, limit=limit),
            MigrationListReply,
        )
        return reply.migrations

    @router.post(
        "/api/v1/dataflows/{df_id}/rebalance",
        status_code=202,
        response_model=RebalanceStarted,
        responses=ERRORS,
        summary="Place the dataflow again and migrate the tasks whose device changes",
    )
    async def rebalance(df_id: str) -> RebalanceStarted:
        reply = await start_rebalance(ctx, df_id)
        return RebalanceStarted(migrations=reply.migrations, moves=reply.moves)

    @router.get(
        "/api/v1/rebalancing/decisions",
        response_model=list[RebalanceDecision],
        summary="What the adaptive rebalancer decided about overloaded devices, and why",
    )
    async def decisions(limit: int = Query(100, ge=1, le=1000)) -> list[RebalanceDecision]:
        reply: DecisionListReply = await ask_migrator(
            ctx, ctx.names.migrator_decisions, DecisionListRequest(limit=limit), DecisionListReply
        )
        return reply.decisions

    return router


__all__ = ["migrations_router", "start_migration", "start_rebalance", "wait_migrations"]
