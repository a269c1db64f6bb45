"""Device records in Redis.

One hash per device (``{ns}:device:{id}``): ``info`` (the registration, JSON), ``status``,
``status_since``, ``registered_at``, ``last_heartbeat``, ``cpu``, ``mem``, ``tasks``,
``boot_id``; ids in the set ``{ns}:devices``. Status changes are compare-and-set in a
Lua script, so a liveness sweep and a heartbeat that race cannot undo each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from echo_shared.models import DeviceInfo, DeviceRecord, DeviceStatus
from echo_shared.names import Names

from .errors import DeviceRevoked, UnknownDevice

# KEYS[1] device hash; ARGV: expected status ('' = any), expected last_heartbeat ('' = any),
# new status, now. Returns the previous status, or false when the check failed.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
if cur == 'revoked' then return false end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return false end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'last_heartbeat') ~= ARGV[2] then return false end
if cur == ARGV[3] then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'status_since', ARGV[4])
return cur
"""

# One heartbeat in one round trip. KEYS[1] device hash; ARGV: now, cpu, mem, tasks, rtt JSON
# ('' = none). Returns '?' for an unknown device, the previous status when the heartbeat
# brought the device back online, else false.
_HEARTBEAT = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '?' end
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1], 'cpu', ARGV[2], 'mem', ARGV[3], 'tasks', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'rtt', ARGV[5]) end
if cur == 'revoked' or cur == 'online' then return false end
redis.call('HSET', KEYS[1], 'status', 'online', 'status_since', ARGV[1])
return cur
"""


@dataclass(frozen=True)
class Beat:
    """One heartbeat as the store keeps it."""

    device: str
    now: float
    cpu: float
    mem: float
    tasks: int
    rtt_ms: dict[str, float] | None = None


class DeviceStore:
    def __init__(self, redis: aioredis.Redis, names: Names) -> None:
        self.r = redis
        self.names = names
        self._transition = redis.register_script(_TRANSITION)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    async def register(
        self, info: DeviceInfo, boot_id: str, now: float
    ) -> tuple[DeviceStatus | None, str | None]:
        """Upsert a registration; returns the previous status and boot id (None if new)."""
        key = self.names.device_key(info.id)
        prev, prev_boot = await self.r.hmget(key, ["status", "boot_id"])
        if prev == DeviceStatus.revoked.value:
            raise DeviceRevoked(info.id)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                key,
                mapping={
                    "info": info.model_dump_json(),
                    "status": DeviceStatus.online.value,
                    "boot_id": boot_id,
                    "last_heartbeat": repr(now),
                },
            )
            if prev != DeviceStatus.online.value:
                p.hset(key, "status_since", repr(now))
            p.hsetnx(key, "registered_at", repr(now))
            p.sadd(self.names.devices_key, info.id)
            await p.execute()
        return (DeviceStatus(str(prev)) if prev else None), (str(prev_boot) if prev_boot else None)

    async def heartbeat(
        self,
        device: str,
        now: float,
        cpu: float,
        mem: float,
        tasks: int,
        rtt_ms: dict[str, float] | None = None,
    ) -> DeviceStatus | None:
        """Record a heartbeat; returns the previous status when this brought the device back online."""
        (out,) = await self.heartbeats([Beat(device, now, cpu, mem, tasks, rtt_ms)])
        if isinstance(out, UnknownDevice):
            raise out
        return out

    async def heartbeats(self, beats: list[Beat]) -> list[DeviceStatus | UnknownDevice | None]:
        """Record heartbeats in one round trip (a script per heartbeat, pipelined); per beat
        the previous status when it brought the device back online, None, or
        ``UnknownDevice`` for a device never registered (its heartbeat is not stored)."""
        async with self.r.pipeline(transaction=False) as p:
            for b in beats:
                rtt = json.dumps(b.rtt_ms) if b.rtt_ms else ""
                args = [repr(b.now), repr(b.cpu), repr(b.mem), str(b.tasks), rtt]
                await self._heartbeat(keys=[self.names.device_key(b.device)], args=args, client=p)
            replies = await p.execute()
        out: list[DeviceStatus | UnknownDevice | None] = []
        for b, r in zip(beats, replies, strict=True):
            if r == "?":
                out.append(UnknownDevice(b.device))
            else:
                out.append(DeviceStatus(r) if r else None)
        return out

    async def transition(
        self,
        device: str,
        to: DeviceStatus,
        now: float,
        *,
        expect: DeviceStatus | None = None,
        expect_heartbeat: str | None = None,
    ) -> DeviceStatus | None:
        """Compare-and-set the status; returns the previous status, or None if nothing changed."""
        prev = await self._transition(
            keys=[self.names.device_key(device)],
            args=[expect.value if expect else "", expect_heartbeat or "", to.value, repr(now)],
        )
        return DeviceStatus(prev) if prev else None

    async def revoke(self, device: str, now: float) -> DeviceStatus | None:
        """Mark a device revoked for good; returns its previous status (None: unknown or already)."""
        key = self.names.device_key(device)
        prev = await self.r.hget(key, "status")
        if prev is None or prev == DeviceStatus.revoked.value:
            return None
        await self.r.hset(key, mapping={"status": DeviceStatus.revoked.value, "status_since": repr(now)})
        return DeviceStatus(str(prev))

    async def raw(self, device: str) -> dict[str, str]:
        data = await self.r.hgetall(self.names.device_key(device))
        return {str(k): str(v) for k, v in data.items()}

    async def get(self, device: str) -> DeviceRecord:
        data = await self.raw(device)
        if not data:
            raise UnknownDevice(device)
        return _record(data)

    async def ids(self) -> list[str]:
        return sorted(str(x) for x in await self.r.smembers(self.names.devices_key))

    async def all(self) -> list[tuple[DeviceRecord, dict[str, str]]]:
        return await self._read(await self.ids())

    async def liveness(self) -> list[tuple[str, DeviceStatus, str | None]]:
        """(id, status, last_heartbeat as stored) of every device: what the liveness sweep
        reads each period, without the registrations (no JSON to parse per device)."""
        ids = await self.ids()
        async with self.r.pipeline(transaction=False) as p:
            for d in ids:
                p.hmget(self.names.device_key(d), ["status", "last_heartbeat"])
            rows = await p.execute()
        return [
            (d, DeviceStatus(status), last or None)
            for d, (status, last) in zip(ids, rows, strict=True)
            if status is not None
        ]

    async def page(self, after: str, limit: int) -> tuple[list[tuple[DeviceRecord, dict[str, str]]], str]:
        """Up to ``limit`` records with ids after ``after`` (id order), and the id to continue
        after ('' when this page is the last)."""
        ids = [d for d in await self.ids() if d > after]
        page = ids[:limit]
        return await self._read(page), (page[-1] if len(ids) > limit else "")

    async def _read(self, ids: list[str]) -> list[tuple[DeviceRecord, dict[str, str]]]:
        async with self.r.pipeline(transaction=False) as p:
            for d in ids:
                p.hgetall(self.names.device_key(d))
            rows = await p.execute()
        return [(_record(row), row) for row in rows if row]


def _float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _record(data: dict[str, str]) -> DeviceRecord:
    info = DeviceInfo.model_validate_json(data["info"])
    return DeviceRecord(
        **info.model_dump(),
        status=DeviceStatus(data.get("status", "online")),
        status_since=_float(data.get("status_since")) or 0.0,
        registered_at=_float(data.get("registered_at")) or 0.0,
        last_heartbeat=_float(data.get("last_heartbeat")),
        cpu_percent=_float(data.get("cpu")),
        memory_percent=_float(data.get("mem")),
        tasks=int(data.get("tasks") or 0),
        rtt_ms=json.loads(data["rtt"]) if data.get("rtt") else {},
    )
