"""Dataflows in Redis: spec and desired state (written first), observed state, task records.

- ``{ns}:df:{id}`` hash: ``id``, ``name``, ``spec`` (JSON), ``desired``, ``state``, ``reason``,
  ``created_at``, ``updated_at``, ``placement`` (JSON), ``traceparent`` (the submission's
  trace, so a deployment stays one trace across master restarts);
- ``{ns}:df:{id}:tasks`` hash: task id -> ``TaskRecord`` JSON;
- ``{ns}:dfs`` sorted set of ids by creation time.

Task records are changed only through a Lua script that merges a patch and can require
the record's generation, so a late status from an old copy of a task never overwrites
the record of its replacement, and concurrent writers never lose each other's fields.

With replicas, what the leading master's loops write (observed state, placements, task
records, checkpoints) is fenced by its lease (``echo_shared.leases``): each write script
first checks that the lease still holds this replica's value, so a paused ex-leader's
writes are refused (``Fenced``) instead of overwriting the new leader's. What the API
writes (a new dataflow, a desired state) is not: any replica serves the API.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from echo_shared.errors import NotFoundError
from echo_shared.leases import Fencing, Lease
from echo_shared.messages import TaskCheckpoint
from echo_shared.models import (
    DataflowSpec,
    DataflowState,
    DesiredState,
    Placement,
    TaskRecord,
    TaskState,
)
from echo_shared.names import Names
from echo_shared.placement_graph import RELAY_OPERATOR, effective_spec
from echo_shared.redis_store import fields

# Every script here runs fenced (``Fencing``): KEYS[#KEYS] is the lease, ARGV[#ARGV] the value
# this replica holds ('' = no lease: a master without replicas' fencing)

# Fenced writes: KEYS[i] (but the last) gets ARGV[i], a JSON array [command, args...]:
# ["HSET", field, value, field, value, ...] or ["SADD" | "SREM", member, ...]
_WRITE = """
for i = 1, #KEYS - 1 do
  local op = cjson.decode(ARGV[i])
  local cmd = op[1]
  if cmd == 'HSET' then
    for j = 2, #op, 2 do redis.call('HSET', KEYS[i], op[j], op[j + 1]) end
  else
    for j = 2, #op do redis.call(cmd, KEYS[i], op[j]) end
  end
end
return 1
"""
# KEYS[1] tasks hash; ARGV[1] task id; ARGV[2] patch (JSON object); ARGV[3] generation the
# record must have ('' = any); ARGV[4] '1' when the patch may only move the state forward
# (reports from agents can arrive after a later state was recorded). Returns the merged
# record, or false.
_PATCH = """
local rank = {pending=0, deploying=1, running=2, finished=3, failed=3, stopping=4, stopped=5}
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local rec = cjson.decode(cur)
if ARGV[3] ~= '' and tonumber(rec['generation']) ~= tonumber(ARGV[3]) then return false end
local patch = cjson.decode(ARGV[2])
if ARGV[4] == '1' and patch['state'] and rank[patch['state']] < rank[rec['state']] then
  patch['state'] = nil
  patch['reason'] = nil
end
for k, v in pairs(patch) do rec[k] = v end
local out = cjson.encode(rec)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
"""


# KEYS[1] tasks hash, KEYS[2] checkpoint key; ARGV[1] task id, ARGV[2] generation, ARGV[3]
# the checkpoint (JSON). Kept only when it comes from the task's current generation and is
# newer than the one stored. Returns 1 when stored.
_CHECKPOINT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if tonumber(rec['generation']) ~= tonumber(ARGV[2]) then return 0 end
local old = redis.call('GET', KEYS[2])
if old then
  local o = cjson.decode(old)
  local n = cjson.decode(ARGV[3])
  if tonumber(o['generation']) == tonumber(ARGV[2])
     and tonumber(o['snapshot']['taken_at']) >= tonumber(n['snapshot']['taken_at']) then
    return 0
  end
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# KEYS[1] tasks hash; ARGV[1] task id, ARGV[2] device, ARGV[3] generation: forget a fenced
# stale copy (it was stopped, or died with its agent).
_UNFENCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
local f = rec['fenced']
if type(f) ~= 'table' or tonumber(f[ARGV[2]]) ~= tonumber(ARGV[3]) then return 0 end
f[ARGV[2]] = nil
if next(f) == nil then rec['fenced'] = cjson.decode('{}') end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 1
"""


def needs_work(desired: DesiredState, state: DataflowState) -> bool:
    """Whether the reconcile loop still has something to do for this dataflow."""
    if desired is DesiredState.stopped:
        return state is not DataflowState.stopped
    return state not in (DataflowState.failed, DataflowState.completed, DataflowState.stopped)


ACTIVE_STATES = {
    DataflowState.pending,
    DataflowState.scheduled,
    DataflowState.deploying,
    DataflowState.running,
    DataflowState.stopping,
}


class Dataflow:
    """A dataflow as read from Redis."""

    def __init__(self, raw: dict[str, str], tasks: dict[str, TaskRecord]) -> None:
        self.raw = raw
        self.id = raw["id"]
        self.name = raw.get("name", "")
        self.spec = DataflowSpec.model_validate_json(raw["spec"])
        self.desired = DesiredState(raw.get("desired", "running"))
        self.state = DataflowState(raw.get("state", "pending"))
        self.reason = raw.get("reason", "")
        self.created_at = float(raw.get("created_at", 0))
        self.updated_at = float(raw.get("updated_at", 0))
        self.placement = Placement.model_validate_json(raw["placement"]) if raw.get("placement") else None
        self.traceparent = raw.get("traceparent", "")
        self.tasks = tasks
        # what is deployed: the spec with the relays its placement added
        self.effective = effective_spec(self.spec, self.placement)


READ_BATCH = 200  # dataflows per round trip when reading many


class DataflowStore:
    def __init__(self, redis: aioredis.Redis, names: Names, lease: Lease | None = None) -> None:
        self.r = redis
        self.names = names
        # lease set: the reconciler's and the mover's writes are fenced by it
        self.fencing = Fencing(redis, names.lease_key("master"), lease)
        self._patch = self.fencing.script(_PATCH)
        self._checkpoint = self.fencing.script(_CHECKPOINT)
        self._unfence = self.fencing.script(_UNFENCE)
        self._write = self.fencing.script(_WRITE)

    async def _fenced(self, *ops: tuple[str, str, list[Any]]) -> None:
        """Apply ``(command, key, args)`` writes atomically, fenced by the lease."""
        keys = [key for _, key, _ in ops]
        await self.fencing.run(self._write, keys, [json.dumps([cmd, *a]) for cmd, _, a in ops])

    @staticmethod
    def new_id() -> str:
        return "df-" + uuid.uuid4().hex[:12]

    async def create(
        self, spec: DataflowSpec, traceparent: str = "", extra: dict[str, str] | None = None
    ) -> str:
        """Store a new dataflow with desired state ``running`` (before anything acts on it)."""
        df_id = self.new_id()
        now = time.time()
        tasks = {
            t.id: TaskRecord(id=t.id, operator=t.operator, updated_at=now).model_dump_json()
            for t in spec.tasks
        }
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                self.names.dataflow_key(df_id),
                mapping=fields(
                    {
                        "id": df_id,
                        "name": spec.name,
                        "spec": spec.model_dump_json(by_alias=True),
                        "desired": DesiredState.running.value,
                        "state": DataflowState.pending.value,
                        "reason": "",
                        "created_at": repr(now),
                        "updated_at": repr(now),
                        "traceparent": traceparent,
                        **(extra or {}),
                    }
                ),
            )
            p.hset(self.names.dataflow_tasks_key(df_id), mapping=fields(tasks))
            p.zadd(self.names.dataflows_key, {df_id: now})
            p.sadd(self.names.active_dataflows_key, df_id)
            await p.execute()
        return df_id

    async def get(self, df_id: str) -> Dataflow:
        async with self.r.pipeline(transaction=True) as p:
            p.hgetall(self.names.dataflow_key(df_id))
            p.hgetall(self.names.dataflow_tasks_key(df_id))
            raw, tasks = await p.execute()
        if not raw:
            raise NotFoundError("dataflow", df_id)
        records = {k: TaskRecord.model_validate_json(v) for k, v in tasks.items()}
        return Dataflow(raw, records)

    async def state_of(self, df_id: str) -> DataflowState:
        """A dataflow's state alone (one field: a long poll looks at it on every change,
        and a dataflow of 1,000 tasks takes milliseconds to read whole)."""
        found, state = await self.r.hmget(self.names.dataflow_key(df_id), ["id", "state"])
        if found is None:
            raise NotFoundError("dataflow", df_id)
        return DataflowState(str(state or "pending"))

    async def ids(self) -> list[str]:
        return [str(x) for x in await self.r.zrange(self.names.dataflows_key, 0, -1)]

    async def active_ids(self) -> list[str]:
        return sorted(str(x) for x in await self.r.smembers(self.names.active_dataflows_key))

    async def set_active(self, df_id: str, active: bool) -> None:
        await self._fenced(("SADD" if active else "SREM", self.names.active_dataflows_key, [df_id]))

    async def all(self, ids: list[str] | None = None) -> list[Dataflow]:
        """The dataflows (all, or those of ``ids`` that exist), read ``READ_BATCH`` at a
        time in one round trip each (a fleet's metrics scrape reads a thousand)."""
        wanted = await self.ids() if ids is None else ids
        out = []
        for start in range(0, len(wanted), READ_BATCH):
            batch = wanted[start : start + READ_BATCH]
            async with self.r.pipeline(transaction=True) as p:
                for df_id in batch:
                    p.hgetall(self.names.dataflow_key(df_id))
                    p.hgetall(self.names.dataflow_tasks_key(df_id))
                rows = await p.execute()
            for i in range(len(batch)):
                raw, tasks = rows[2 * i], rows[2 * i + 1]
                if raw:
                    records = {k: TaskRecord.model_validate_json(v) for k, v in tasks.items()}
                    out.append(Dataflow(raw, records))
        return out

    async def set_desired(self, df_id: str, desired: DesiredState) -> None:
        key = self.names.dataflow_key(df_id)
        if not await self.r.exists(key):
            raise NotFoundError("dataflow", df_id)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(key, mapping={"desired": desired.value, "updated_at": repr(time.time())})
            p.sadd(self.names.active_dataflows_key, df_id)
            await p.execute()

    async def set_state(self, df_id: str, state: DataflowState, reason: str = "", **extra: str) -> None:
        values = fields({"state": state.value, "reason": reason, "updated_at": repr(time.time()), **extra})
        await self._fenced(("HSET", self.names.dataflow_key(df_id), _flat(dict(values))))

    async def set_placement(self, df_id: str, placement: Placement, generations: dict[str, int]) -> None:
        """Record a placement and assign each task its device and generation, atomically."""
        key = self.names.dataflow_tasks_key(df_id)
        current = await self.r.hgetall(key)
        now = time.time()
        updated: dict[str, str] = {}
        for relay in placement.relays:  # tasks the scheduler added: records of their own
            if relay.id not in current:
                current[relay.id] = TaskRecord(
                    id=relay.id, operator=RELAY_OPERATOR, updated_at=now
                ).model_dump_json()
                generations.setdefault(relay.id, 1)
        placed = [(tp.task, tp.device, tp.reason) for tp in placement.tasks]
        placed += [(r.id, r.device, r.reason) for r in placement.relays]
        for task_id, device, reason in placed:
            rec = TaskRecord.model_validate_json(current[task_id])
            rec.device = device
            rec.generation = generations[task_id]
            rec.placement_reason = reason
            rec.state = TaskState.pending
            rec.reason = ""
            rec.updated_at = now
            rec.attempts = 0
            rec.last_command_at = 0.0
            updated[task_id] = rec.model_dump_json()
        await self._fenced(
            ("HSET", key, _flat(updated)),
            (
                "HSET",
                self.names.dataflow_key(df_id),
                ["placement", placement.model_dump_json(), "updated_at", repr(now)],
            ),
        )

    async def patch_tasks(self, df_id: str, patches: list[tuple[str, dict[str, Any], int | None]]) -> None:
        """Several ``patch_task`` calls in one round trip (each still fenced by generation)."""
        if not patches:
            return
        key = self.names.dataflow_tasks_key(df_id)
        async with self.r.pipeline(transaction=False) as p:
            for task, patch, generation in patches:
                body = {k: (v.value if hasattr(v, "value") else v) for k, v in patch.items()}
                body.setdefault("updated_at", time.time())
                gen = "" if generation is None else str(generation)
                await self.fencing.queue(p, self._patch, [key], [task, json.dumps(body), gen, "0"])
            for result in await p.execute():
                self.fencing.check(result)

    async def patch_task(
        self,
        df_id: str,
        task: str,
        patch: dict[str, Any],
        *,
        generation: int | None = None,
        forward_only: bool = False,
    ) -> TaskRecord | None:
        """Merge ``patch`` into a task record; None if it is missing or of another generation.

        ``forward_only`` (for reports from agents) ignores a state earlier than the recorded one.
        """
        patch = {k: (v.value if hasattr(v, "value") else v) for k, v in patch.items()}
        patch.setdefault("updated_at", time.time())
        out = await self.fencing.run(
            self._patch,
            [self.names.dataflow_tasks_key(df_id)],
            [
                task,
                json.dumps(patch),
                "" if generation is None else str(generation),
                "1" if forward_only else "0",
            ],
        )
        return TaskRecord.model_validate_json(out) if out else None

    # ------------------------------------------------------------------ moves

    async def save_checkpoint(self, ckpt: TaskCheckpoint) -> bool:
        """Keep a task's periodic checkpoint if it comes from its current generation."""
        keys = [
            self.names.dataflow_tasks_key(ckpt.dataflow),
            self.names.checkpoint_key(ckpt.dataflow, ckpt.task),
        ]
        out = await self.fencing.run(
            self._checkpoint, keys, [ckpt.task, str(ckpt.generation), ckpt.model_dump_json()]
        )
        return bool(out)

    async def task_record(self, df_id: str, task: str) -> TaskRecord | None:
        raw = await self.r.hget(self.names.dataflow_tasks_key(df_id), task)
        return TaskRecord.model_validate_json(raw) if raw else None

    async def checkpoint(self, df_id: str, task: str) -> TaskCheckpoint | None:
        raw = await self.r.get(self.names.checkpoint_key(df_id, task))
        return TaskCheckpoint.model_validate_json(raw) if raw else None

    async def unfence(self, df_id: str, task: str, device: str, generation: int) -> None:
        keys = [self.names.dataflow_tasks_key(df_id)]
        await self.fencing.run(self._unfence, keys, [task, device, str(generation)])

    async def move_in_placement(self, df_id: str, task: str, device: str, reason: str) -> None:
        """Show a moved task on its new device in the dataflow's recorded placement."""
        raw = await self.r.hget(self.names.dataflow_key(df_id), "placement")
        if not raw:
            return
        placement = Placement.model_validate_json(raw)
        for tp in placement.tasks:
            if tp.task == task:
                tp.device, tp.reason, tp.runner_up, tp.runner_up_reason = device, reason, None, ""
        placed = ["placement", placement.model_dump_json()]
        await self._fenced(("HSET", self.names.dataflow_key(df_id), placed))


def _flat(mapping: dict[str, str]) -> list[str]:
    """``{field: value}`` as ``[field, value, ...]`` (the fenced write script's HSET)."""
    return [x for kv in mapping.items() for x in kv]
