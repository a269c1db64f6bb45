"""Device identities in Redis (the master owns them).

- ``{ns}:enrol:{sha256(token)}``: a one-time enrolment token (JSON: device, tier, created,
  expires), with a TTL; consumed by ``GETDEL``, so two agents racing with one token get
  one identity between them.
- ``{ns}:identity:{device}`` (hash): ``tier``, ``status`` (``enrolled`` / ``revoked``),
  ``created``, ``nats`` ("1" when the device reaches NATS), ``logins`` (JSON list of
  ``{"username", "retire_at"}``: the current login and those retiring after a rotation);
  ids in the set ``{ns}:identities``.
- ``{ns}:identity:login:{username}`` (hash): ``device``, ``nats_digest`` (SHA-256 of the
  NATS password: the NATS auth callout checks it; MQTT passwords live in Mosquitto only).
- ``{ns}:identity:{device}:grants`` (hash): ``{dataflow}/{task}`` -> JSON
  ``{"generation", "channels": [[topic, produce], ...]}``: what the device's tasks use,
  the source of its broker role (``DeviceAccess``).

Tokens and passwords are random (``secrets``) and stored only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from echo_shared.dynsec import ChannelGrant
from echo_shared.leases import Fencing, Lease
from echo_shared.names import Names

ENROLLED = "enrolled"
REVOKED = "revoked"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# Grant writes of the leading master (its deploys and stops), fenced by its lease
# (``Fencing``: the lease is the last key, the holder's value the last argument).
# _SET_GRANTS: KEYS[i] (but the last) gets field ARGV[2i-1] = ARGV[2i].
_SET_GRANTS = """
for i = 1, #KEYS - 1 do redis.call('HSET', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]) end
return 1
"""
# _DROP_GRANT: KEYS[1] the device's grants; ARGV[1] the task key, ARGV[2] the generation
# stopped: withdrawn unless a newer generation of the task runs there
_DROP_GRANT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if tonumber(cjson.decode(raw)['generation']) > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# _REMOVE_LOGINS: KEYS[1] a device's identity; ARGV[1..n-1] the usernames to take off its
# login list (nothing else of the identity is written)
_REMOVE_LOGINS = """
local raw = redis.call('HGET', KEYS[1], 'logins')
if not raw then return 0 end
local gone = {}
for i = 1, #ARGV - 1 do gone[ARGV[i]] = true end
local kept = {}
for _, login in ipairs(cjson.decode(raw)) do
  if not gone[login['username']] then table.insert(kept, login) end
end
redis.call('HSET', KEYS[1], 'logins', #kept == 0 and '[]' or cjson.encode(kept))
return 1
"""


@dataclass
class Login:
    username: str
    retire_at: float | None = None


@dataclass
class Identity:
    device: str
    tier: str
    status: str
    created: float
    nats: bool
    logins: list[Login] = field(default_factory=list)

    @property
    def current(self) -> Login | None:
        live = [lg for lg in self.logins if lg.retire_at is None]
        return live[-1] if live else None


@dataclass(frozen=True)
class TaskGrant:
    generation: int
    channels: tuple[ChannelGrant, ...]


class IdentityStore:
    def __init__(self, redis: aioredis.Redis, names: Names, lease: Lease | None = None) -> None:
        self.r = redis
        self.names = names
        # lease set: grant writes (the leader's deploys) and login retirement are fenced by it
        self.fencing = Fencing(redis, names.lease_key("master"), lease)
        self._set_grants = self.fencing.script(_SET_GRANTS)
        self._drop_grant = self.fencing.script(_DROP_GRANT)
        self._remove_logins = self.fencing.script(_REMOVE_LOGINS)

    # ------------------------------------------------------------ enrolment tokens

    async def add_enrolment(self, token: str, device: str, tier: str, ttl: float) -> float:
        now = time.time()
        expires = now + ttl
        doc = json.dumps({"device": device, "tier": tier, "created": now, "expires": expires})
        await self.r.set(self.names.enrolment_key(digest(token)), doc, px=max(1, int(ttl * 1000)))
        return expires

    async def take_enrolment(self, token: str) -> dict[str, Any] | None:
        """The enrolment behind ``token``, consumed (None: unknown, expired or already used)."""
        raw = await self.r.getdel(self.names.enrolment_key(digest(token)))
        if raw is None:
            return None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    # ------------------------------------------------------------ identities

    async def create(self, ident: Identity) -> bool:
        """Create the identity; False when the device id is taken (enrolled or revoked)."""
        key = self.names.device_identity_key(ident.device)
        created = await self.r.hsetnx(key, "status", ident.status)
        if not created:
            return False
        await self.r.hset(key, mapping=self._fields(ident))
        await self.r.sadd(self.names.device_identities_key, ident.device)
        return True

    async def remove_logins(self, device: str, usernames: list[str]) -> None:
        """Take retired logins off a device's identity (the leader's retirement sweep, fenced):
        only its login list changes, so a revocation or rotation made meanwhile by another
        replica's API is kept."""
        await self.fencing.run(self._remove_logins, [self.names.device_identity_key(device)], [*usernames])

    async def save(self, ident: Identity) -> None:
        await self.r.hset(self.names.device_identity_key(ident.device), mapping=self._fields(ident))

    @staticmethod
    def _fields(ident: Identity) -> Any:
        return {
            "tier": ident.tier,
            "status": ident.status,
            "created": repr(ident.created),
            "nats": "1" if ident.nats else "0",
            "logins": json.dumps(
                [{"username": lg.username, "retire_at": lg.retire_at} for lg in ident.logins]
            ),
        }

    async def get(self, device: str) -> Identity | None:
        data = await self.r.hgetall(self.names.device_identity_key(device))
        if not data or "tier" not in data:
            return None
        logins = [Login(str(x["username"]), x.get("retire_at")) for x in json.loads(data.get("logins", "[]"))]
        return Identity(
            device=device,
            tier=str(data["tier"]),
            status=str(data["status"]),
            created=float(data.get("created", 0)),
            nats=data.get("nats") == "1",
            logins=logins,
        )

    async def ids(self) -> list[str]:
        return sorted(str(x) for x in await self.r.smembers(self.names.device_identities_key))

    # ------------------------------------------------------------ logins

    async def add_login(self, username: str, device: str, nats_password: str | None) -> None:
        mapping = {"device": device, "created": repr(time.time())}
        if nats_password is not None:
            mapping["nats_digest"] = digest(nats_password)
        await self.r.hset(self.names.device_login_key(username), mapping=mapping)  # type: ignore[arg-type]

    async def drop_login(self, username: str) -> None:
        await self.r.delete(self.names.device_login_key(username))

    async def check_nats_login(self, username: str, password: str) -> str | None:
        """The device whose NATS login this is (None: unknown user or wrong password)."""
        data = await self.r.hgetall(self.names.device_login_key(username))
        want = data.get("nats_digest") if data else None
        if not want or not hmac.compare_digest(str(want), digest(password)):
            return None
        return str(data["device"])

    # ------------------------------------------------------------ grants

    async def set_grant(self, device: str, task_key: str, grant: TaskGrant) -> None:
        await self.set_grants([(device, task_key, grant)])

    @staticmethod
    def _grant_json(grant: TaskGrant) -> str:
        doc = {
            "generation": grant.generation,
            "channels": [[c.topic, c.produce, c.app] for c in grant.channels],
        }
        return json.dumps(doc)

    async def drop_grant(self, device: str, task_key: str, generation: int) -> bool:
        """Withdraw a task's grant unless a newer generation of it runs there (fencing)."""
        keys = [self.names.device_grants_key(device)]
        return bool(await self.fencing.run(self._drop_grant, keys, [task_key, generation]))

    async def status_and_grants(
        self, device: str, remember: tuple[str, str, int] | None = None
    ) -> tuple[str | None, dict[str, TaskGrant]]:
        """The device's status and grants in one round trip; ``remember`` (key, entry, cap):
        push ``entry`` on a capped list meanwhile (its recent NATS connections)."""
        async with self.r.pipeline(transaction=False) as p:
            p.hget(self.names.device_identity_key(device), "status")
            p.hgetall(self.names.device_grants_key(device))
            if remember is not None:
                key, entry, cap = remember
                p.lpush(key, entry)
                p.ltrim(key, 0, cap - 1)
            res = await p.execute()
        status = str(res[0]) if res[0] is not None else None
        return status, self._parse_grants(res[1])

    async def statuses(self, devices: list[str]) -> dict[str, str | None]:
        """Several devices' identity status in one round trip."""
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.hget(self.names.device_identity_key(d), "status")
            res = await p.execute()
        return {d: (str(s) if s is not None else None) for d, s in zip(devices, res, strict=True)}

    async def set_grants(self, grants: list[tuple[str, str, TaskGrant]]) -> None:
        """Several (device, task key, grant) at once (one round trip, fenced)."""
        if not grants:
            return
        keys = [self.names.device_grants_key(device) for device, _, _ in grants]
        args = [x for _, task_key, grant in grants for x in (task_key, self._grant_json(grant))]
        await self.fencing.run(self._set_grants, keys, args)

    async def grants_of_many(self, devices: list[str]) -> dict[str, dict[str, TaskGrant]]:
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.hgetall(self.names.device_grants_key(d))
            res = await p.execute()
        return {d: self._parse_grants(raw) for d, raw in zip(devices, res, strict=True)}

    async def grants(self, device: str) -> dict[str, TaskGrant]:
        return self._parse_grants(await self.r.hgetall(self.names.device_grants_key(device)))

    @staticmethod
    def _parse_grants(raw: dict[Any, Any]) -> dict[str, TaskGrant]:
        out: dict[str, TaskGrant] = {}
        for k, v in raw.items():
            doc = json.loads(v)
            out[str(k)] = TaskGrant(
                int(doc["generation"]),
                tuple(
                    ChannelGrant(str(c[0]), bool(c[1]), str(c[2]) if len(c) > 2 else "")
                    for c in doc["channels"]
                ),
            )
        return out

    async def clear_grants(self, device: str) -> None:
        await self.r.delete(self.names.device_grants_key(device))
