"""Migrations as sagas persisted in Redis: the record of every step, so a restarted
migrator completes or rolls back what it finds half done.

- ``{ns}:migration:{id}``: the ``Migration`` JSON (state, steps with their timings);
- ``{ns}:migrations``: every id, scored by creation time (listing);
- ``{ns}:migrations:active``: ids not finished yet (resumed at start);
- ``{ns}:rebalance:decisions``: the rebalancer's decisions, newest first (capped).

One writer per migration: the migrator replica that leads (``leases``). With a lease, every
saga write checks it holds the lease in the same script, so a paused ex-leader's writes are
refused (``Fenced``) instead of overwriting what the new leader recorded.
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from echo_shared.leases import Fencing, Lease
from echo_shared.messages import Migration, MigrationStep, RebalanceDecision
from echo_shared.names import Names

FINISHED = ("completed", "failed", "rolled_back")
MAX_DECISIONS = 1000


def new_id() -> str:
    return "mig-" + uuid.uuid4().hex[:12]


# run fenced (``Fencing``: the lease is the last key, the holder's value the last argument)
# KEYS[1] the migration, KEYS[2] all migrations (by time), KEYS[3] the active ones;
# ARGV[1] the migration (JSON), ARGV[2] its creation time, ARGV[3] its id
_CREATE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 'OK'
"""
# KEYS[1] the migration, KEYS[2] the active ones; ARGV[1] the migration (JSON), ARGV[2] '1'
# when it finished, ARGV[3] its id
_SAVE = """
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) end
return 'OK'
"""


class SagaStore:
    def __init__(self, redis: aioredis.Redis, names: Names, lease: Lease | None = None) -> None:
        self.r = redis
        self.names = names
        self.fencing = Fencing(redis, names.lease_key("migrator"), lease)  # lease set: writes fenced
        self._create = self.fencing.script(_CREATE)
        self._save = self.fencing.script(_SAVE)

    async def create(self, m: Migration) -> None:
        m.created_at = m.updated_at = time.time()
        n = self.names
        keys = [n.migration_key(m.id), n.migrations_key, n.active_migrations_key]
        await self.fencing.run(self._create, keys, [m.model_dump_json(), str(m.created_at), m.id])

    async def save(self, m: Migration) -> None:
        m.updated_at = time.time()
        keys = [self.names.migration_key(m.id), self.names.active_migrations_key]
        await self.fencing.run(
            self._save, keys, [m.model_dump_json(), "1" if m.state in FINISHED else "0", m.id]
        )

    async def get(self, mid: str) -> Migration | None:
        raw = await self.r.get(self.names.migration_key(mid))
        return Migration.model_validate_json(raw) if raw else None

    async def active(self) -> list[Migration]:
        ids = sorted(str(x) for x in await self.r.smembers(self.names.active_migrations_key))
        out = [m for m in [await self.get(i) for i in ids] if m is not None]
        return sorted(out, key=lambda m: m.created_at)

    async def latest(self, dataflow: str | None, limit: int) -> list[Migration]:
        out: list[Migration] = []
        start = 0
        while len(out) < limit:
            ids = await self.r.zrevrange(self.names.migrations_key, start, start + 199)
            if not ids:
                break
            start += len(ids)
            for i in ids:
                m = await self.get(str(i))
                if m is not None and (dataflow is None or m.dataflow == dataflow):
                    out.append(m)
                    if len(out) >= limit:
                        break
        return out

    async def record_decision(self, d: RebalanceDecision) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.lpush(self.names.decisions_key, d.model_dump_json())
            p.ltrim(self.names.decisions_key, 0, MAX_DECISIONS - 1)
            await p.execute()

    async def decisions(self, limit: int) -> list[RebalanceDecision]:
        raw = await self.r.lrange(self.names.decisions_key, 0, limit - 1)
        return [RebalanceDecision.model_validate_json(x) for x in raw]


def step(m: Migration, name: str) -> MigrationStep:
    """The step ``name`` of ``m`` (added, pending, when it is not there yet)."""
    for s in m.steps:
        if s.name == name:
            return s
    s = MigrationStep(name=name)
    m.steps.append(s)
    return s


def begin(m: Migration, name: str, detail: str = "") -> MigrationStep:
    s = step(m, name)
    if s.state != "running":
        s.state, s.started_at = "running", time.time()
    if detail:
        s.detail = detail
    return s


def end(m: Migration, name: str, state: str = "done", detail: str = "") -> MigrationStep:
    s = step(m, name)
    s.state = state  # type: ignore[assignment]
    s.ended_at = time.time()
    if not s.started_at:
        s.started_at = s.ended_at
    s.ms = round((s.ended_at - s.started_at) * 1000, 3)
    if detail:
        s.detail = detail
    return s
