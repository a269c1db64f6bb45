"""The migrator's NATS API: start a migration, rebalance a dataflow, read sagas and decisions."""

from __future__ import annotations

import logging

from nats.aio.subscription import Subscription

from echo_shared.errors import EchoError
from echo_shared.messages import (
    DecisionListReply,
    DecisionListRequest,
    MigrateReply,
    MigrateRequest,
    MigrationGetReply,
    MigrationGetRequest,
    MigrationListReply,
    MigrationListRequest,
    PlaceReply,
    PlaceRequest,
    RebalanceReply,
    RebalanceRequest,
)
from echo_shared.models import TaskState
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

from .migrating import Migrations, StepFailed
from .sagas import SagaStore

log = logging.getLogger(__name__)


class MigratorService:
    def __init__(self, bus: NatsBus, names: Names, store: SagaStore, migrations: Migrations) -> None:
        self.bus = bus
        self.names = names
        self.store = store
        self.migrations = migrations

    async def serve(self) -> None:
        """What every replica answers: reading migrations and decisions."""
        q = self.names.migrator_queue
        await self.bus.serve(self.names.migrator_get, q, MigrationGetRequest, self.get)
        await self.bus.serve(self.names.migrator_list, q, MigrationListRequest, self.list)
        await self.bus.serve(self.names.migrator_decisions, q, DecisionListRequest, self.decisions)

    async def lead(self) -> list[Subscription]:
        """What only the leader answers (it runs the sagas): starting migrations, rebalancing."""
        q = self.names.migrator_queue
        return [
            await self.bus.serve(self.names.migrator_migrate, q, MigrateRequest, self.migrate),
            await self.bus.serve(self.names.migrator_rebalance, q, RebalanceRequest, self.rebalance),
        ]

    async def migrate(self, req: MigrateRequest) -> MigrateReply:
        return await self.migrations.start(req)

    async def rebalance(self, req: RebalanceRequest) -> RebalanceReply:
        """Place the dataflow again (observed rates replace hints) and migrate every running
        task whose device changes; the others stay where they are."""
        try:
            listing = await self.migrations.tasks(dataflow=req.dataflow)
        except StepFailed as e:
            return RebalanceReply(ok=False, status=503, reason=str(e))
        spec = listing.specs.get(req.dataflow)
        if spec is None:
            return RebalanceReply(ok=False, status=409, reason=f"dataflow {req.dataflow} is not running")
        if not any(t.state in (TaskState.running, TaskState.deploying) for t in listing.tasks):
            return RebalanceReply(
                ok=False, status=409, reason=f"dataflow {req.dataflow} runs no task: nothing to move"
            )
        ids = {t.id for t in spec.tasks}
        rates = {t.task: t.rate_out for t in listing.tasks if t.rate_out > 0 and t.task in ids}
        try:
            reply = await self.bus.request(
                self.names.scheduler_place,
                PlaceRequest(dataflow=req.dataflow, spec=spec, rates=rates),
                PlaceReply,
                timeout=self.migrations.settings.request_timeout,
            )
        except EchoError as e:
            return RebalanceReply(ok=False, status=503, reason=f"the scheduler did not answer: {e}")
        if not reply.ok or reply.placement is None:
            return RebalanceReply(ok=False, status=409, reason=f"cannot be placed again: {reply.reason}")
        where = {t.task: t for t in listing.tasks}
        out = RebalanceReply(ok=True)
        for tp in reply.placement.tasks:
            loc = where.get(tp.task)
            if loc is None or loc.device == tp.device or loc.state is not TaskState.running:
                continue
            started = await self.migrations.start(
                MigrateRequest(
                    dataflow=req.dataflow,
                    task=tp.task,
                    device=tp.device,
                    origin=req.origin,
                    reason=req.reason or f"rebalance: {tp.reason}",
                )
            )
            if started.ok and started.migration:
                out.migrations.append(started.migration)
                out.moves[tp.task] = tp.device
            else:
                log.info("rebalance of %s: %s stays (%s)", req.dataflow, tp.task, started.reason)
        return out

    async def get(self, req: MigrationGetRequest) -> MigrationGetReply:
        m = await self.store.get(req.id)
        if m is None:
            return MigrationGetReply(ok=False, reason=f"migration {req.id!r} not found")
        return MigrationGetReply(ok=True, migration=m)

    async def list(self, req: MigrationListRequest) -> MigrationListReply:
        return MigrationListReply(
            migrations=await self.store.latest(req.dataflow, max(1, min(req.limit, 1000)))
        )

    async def decisions(self, req: DecisionListRequest) -> DecisionListReply:
        return DecisionListReply(decisions=await self.store.decisions(max(1, min(req.limit, 1000))))
