"""API tokens: roles, the token store (Redis) and its REST routes (admin only).

A token is ``echo_`` + 32 random bytes (``secrets``), shown once when it is created;
Redis keeps only its SHA-256 digest:

- ``names.token_key(id)``: hash ``role``, ``name``, ``digest``, ``created``, ``expires``
  (epoch seconds or ``""``), ``revoked`` (epoch seconds or ``""``), ``creator`` (token id)
- ``names.token_digest_key(digest)``: the token id (how a presented token is found)
- ``names.tokens_key``: every token id, scored by creation time

An expiring token's keys are dropped by Redis a week after it expired (until then its 401
says "expired" rather than "unknown"). A revoked token keeps its records (it is listed as
revoked). The first admin token comes from ``ECHO_ADMIN_TOKEN_FILE`` and has id
``bootstrap`` (``register_bootstrap``): a new file content replaces the old digest; a
bootstrap token that an admin revoked stays revoked until the file holds a new token.

``verify`` is on every request's path: it remembers each answer in-process for
``cache_seconds`` (at most 1 s, so a revocation takes effect within a second on every
master replica).

- ``POST /api/v1/tokens`` ``{"role", "ttl"?, "name"?}`` -> ``201 {"id", "token", "role", "expires"}``
- ``GET /api/v1/tokens`` -> ``[{"id", "role", "name", "created", "expires", "revoked"}]``
- ``DELETE /api/v1/tokens/{id}`` -> the token, revoked (unknown id -> 404)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError, WatchError

from echo_shared.errors import NotFoundError
from echo_shared.names import Names

from .errors import TokenStoreUnavailable, Unauthenticated
from .views import ERRORS

log = logging.getLogger(__name__)

TOKEN_PREFIX = "echo_"
BOOTSTRAP_ID = "bootstrap"
KEEP_AFTER_EXPIRY = 7 * 86400.0
MAX_TTL = 3650 * 86400.0
CACHE_SIZE = 4096


class Role(StrEnum):
    """API roles, each including the one before: viewer < operator < admin."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def covers(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: its token's id and role."""

    token_id: str
    role: Role
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    role: Role
    name: str
    created: float
    expires: float | None
    revoked: bool


# ----------------------------------------------------------------------------- durations

_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_ttl(value: str | float | int) -> float:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("a duration is e.g. 90s, 15m, 24h, 7d or a number of seconds, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _TTL.match(value)
        if not m:
            raise ValueError(
                f"{value!r} is not a duration: use e.g. 90s, 15m, 24h, 7d or a number of seconds"
            )
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration must be a positive number of seconds")
    if seconds > MAX_TTL:
        raise ValueError("a token lives 3650 days at most (omit ttl for a token that does not expire)")
    return seconds


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC (``2025-01-31T12:00:00Z``); None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _float(v: str | None) -> float | None:
    return float(v) if v else None


# ----------------------------------------------------------------------------- store

# revoke atomically, only a token that exists (never leaves a partial hash behind)
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local r = redis.call('HGET', KEYS[1], 'revoked')
if not r or r == '' then redis.call('HSET', KEYS[1], 'revoked', ARGV[1]) end
return 1
"""


class TokenStore:
    """API tokens in Redis (see the module docstring), with a short in-process cache."""

    def __init__(
        self,
        redis: aioredis.Redis,
        names: Names,
        *,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # redis-py types answers as bytes | str; the master's client decodes (str)
        self.redis: Any = redis
        self.names = names
        self.cache_seconds = min(max(cache_seconds, 0.0), 1.0)
        self.clock = clock
        # digest -> (remember until (monotonic), Principal, or (reason, token id) of a refusal)
        self._cache: dict[str, tuple[float, Principal | tuple[str, str | None]]] = {}

    # ------------------------------------------------------------------ verification

    async def verify(self, secret: str) -> Principal:
        """The principal of a presented token; ``Unauthenticated`` (invalid_token) if it is
        unknown, expired or revoked; ``TokenStoreUnavailable`` if Redis does not answer."""
        digest = digest_of(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            outcome = hit[1]
        else:
            outcome = await self._lookup(digest)
            if self.cache_seconds > 0:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache[digest] = (now + self.cache_seconds, outcome)
        if isinstance(outcome, Principal):
            if outcome.expires is None or outcome.expires > self.clock():
                return outcome
            outcome = (f"the token expired at {iso(outcome.expires)}", outcome.token_id)
        reason, token_id = outcome
        raise Unauthenticated(reason, error="invalid_token", token_id=token_id)

    async def _lookup(self, digest: str) -> Principal | tuple[str, str | None]:
        try:
            token_id = await self.redis.get(self.names.token_digest_key(digest))
            if token_id is None:
                return ("the token is unknown", None)
            role, expires, revoked = await self.redis.hmget(
                self.names.token_key(token_id), ["role", "expires", "revoked"]
            )
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot check the token: Redis did not answer ({e})") from e
        if role not in _RANK:
            return ("the token is unknown", None)
        if revoked:
            return ("the token was revoked", token_id)
        return Principal(token_id, Role(role), _float(expires))

    def forget(self) -> None:
        """Drop the cache (after a revocation here; other replicas wait ``cache_seconds``)."""
        self._cache.clear()

    # ------------------------------------------------------------------ changes

    async def create(
        self, role: Role, ttl: float | None = None, name: str = "", creator: str = ""
    ) -> tuple[TokenRecord, str]:
        """A new token: its record and the secret (shown once, never stored)."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        rec = TokenRecord(
            id="tok-" + secrets.token_hex(6),
            role=role,
            name=name,
            created=now,
            expires=now + ttl if ttl is not None else None,
            revoked=False,
        )
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                self._write(pipe, rec, digest_of(secret), creator)
                await pipe.execute()
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot store the token: {e}") from e
        return rec, secret

    def _write(self, pipe: Any, rec: TokenRecord, digest: str, creator: str) -> None:
        key, dkey = self.names.token_key(rec.id), self.names.token_digest_key(digest)
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "role": rec.role.value,
                "name": rec.name,
                "digest": digest,
                "created": repr(rec.created),
                "expires": repr(rec.expires) if rec.expires is not None else "",
                "revoked": "",
                "creator": creator,
            },
        )
        pipe.set(dkey, rec.id)
        pipe.zadd(self.names.tokens_key, {rec.id: rec.created})
        if rec.expires is not None:
            drop_at = math.ceil(rec.expires + KEEP_AFTER_EXPIRY)
            pipe.expireat(key, drop_at)
            pipe.expireat(dkey, drop_at)

    async def revoke(self, token_id: str) -> TokenRecord:
        """Mark a token revoked (idempotent: the first revocation time is kept); 404 if unknown."""
        try:
            found = await self.redis.eval(_REVOKE, 1, self.names.token_key(token_id), repr(self.clock()))
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot revoke the token: {e}") from e
        if not found:
            raise NotFoundError("token", token_id)
        self.forget()
        rec = await self.get(token_id)
        log.info("API token %s (%s) revoked", rec.id, rec.role.value)
        return rec

    async def get(self, token_id: str) -> TokenRecord:
        try:
            raw = await self.redis.hgetall(self.names.token_key(token_id))
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot read the token: {e}") from e
        rec = _record(token_id, raw)
        if rec is None:
            raise NotFoundError("token", token_id)
        return rec

    async def list(self) -> list[TokenRecord]:
        """Every token (oldest first), without secrets or digests."""
        try:
            ids = await self.redis.zrange(self.names.tokens_key, 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for token_id in ids:
                    pipe.hgetall(self.names.token_key(token_id))
                raws = await pipe.execute()
            out, gone = [], []
            for token_id, raw in zip(ids, raws, strict=True):
                rec = _record(token_id, raw)
                if rec is None:
                    gone.append(token_id)  # dropped by Redis a week after it expired
                else:
                    out.append(rec)
            if gone:
                await self.redis.zrem(self.names.tokens_key, *gone)
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot list the tokens: {e}") from e
        return out

    async def register_bootstrap(self, secret: str) -> TokenRecord:
        """Register the first admin token (id ``bootstrap``); idempotent, safe with replicas.

        A changed secret replaces the old digest (the old token stops working). A bootstrap
        token an admin revoked stays revoked until the file holds a new secret.
        """
        if not secret:
            raise ValueError("an empty bootstrap token")
        key = self.names.token_key(BOOTSTRAP_ID)
        digest = digest_of(secret)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        old = await pipe.hgetall(key)
                        if old.get("digest") == digest and old.get("revoked"):
                            log.warning(
                                "the bootstrap admin token was revoked; it stays revoked: put a new "
                                "token in ECHO_ADMIN_TOKEN_FILE to have one"
                            )
                            await pipe.reset()
                            break
                        if old.get("digest") == digest and old.get("role") == Role.admin.value:
                            pipe.multi()
                            pipe.set(self.names.token_digest_key(digest), BOOTSTRAP_ID)
                            await pipe.execute()
                            break
                        pipe.multi()
                        if old.get("digest"):
                            pipe.delete(self.names.token_digest_key(old["digest"]))
                        rec = TokenRecord(
                            BOOTSTRAP_ID, Role.admin, "bootstrap (ECHO_ADMIN_TOKEN_FILE)",
                            self.clock(), None, False,
                        )  # fmt: skip
                        self._write(pipe, rec, digest, "")
                        await pipe.execute()
                        log.info("bootstrap admin token registered%s", " (replaced)" if old else "")
                        break
                    except WatchError:
                        continue
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot register the bootstrap token: {e}") from e
        self.forget()
        return await self.get(BOOTSTRAP_ID)


def _record(token_id: str, raw: dict[str, str]) -> TokenRecord | None:
    if not raw or raw.get("role") not in _RANK:
        return None
    return TokenRecord(
        id=token_id,
        role=Role(raw["role"]),
        name=raw.get("name", ""),
        created=float(raw.get("created") or 0.0),
        expires=_float(raw.get("expires")),
        revoked=bool(raw.get("revoked")),
    )


# ----------------------------------------------------------------------------- REST


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="viewer (every GET), operator (+ submit, stop, migrate), admin (+ all)")
    ttl: str | float | None = Field(
        default=None,
        description="lifetime: 90s, 15m, 24h, 7d or a number of seconds; omitted: no expiry",
        examples=["24h"],
    )
    name: str = Field(default="", max_length=100, description="a note: who or what the token is for")

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float | None:
        if v is None:
            return None
        if not isinstance(v, str | int | float):
            raise ValueError("ttl is a duration such as 24h or a number of seconds")
        return parse_ttl(v)


class TokenCreated(BaseModel):
    id: str
    token: str = Field(description="the secret: send it as Authorization: Bearer <token>; shown once")
    role: Role
    expires: str | None = Field(description="ISO 8601 UTC, or null: no expiry")


class TokenView(BaseModel):
    id: str
    role: Role
    name: str
    created: str
    expires: str | None
    revoked: bool


def token_view(rec: TokenRecord) -> TokenView:
    return TokenView(
        id=rec.id,
        role=rec.role,
        name=rec.name,
        created=iso(rec.created) or "",
        expires=iso(rec.expires),
        revoked=rec.revoked,
    )


def tokens_router(tokens: TokenStore) -> APIRouter:
    r = APIRouter(tags=["access"])

    @r.post(
        "/api/v1/tokens",
        status_code=201,
        response_model=TokenCreated,
        responses=ERRORS,
        summary="Create an API token (admin); the secret is in this answer only",
    )
    async def create_token(body: TokenRequest, request: Request) -> TokenCreated:
        principal: Principal | None = getattr(request.state, "principal", None)
        ttl = float(body.ttl) if body.ttl is not None else None
        rec, secret = await tokens.create(
            body.role, ttl, body.name, creator=principal.token_id if principal else ""
        )
        request.state.audit_target = {"token": rec.id, "role": rec.role.value}
        return TokenCreated(id=rec.id, token=secret, role=rec.role, expires=iso(rec.expires))

    @r.get("/api/v1/tokens", response_model=list[TokenView], summary="Every API token (admin), no secrets")
    async def list_tokens() -> list[TokenView]:
        return [token_view(t) for t in await tokens.list()]

    @r.delete(
        "/api/v1/tokens/{token_id}",
        response_model=TokenView,
        responses=ERRORS,
        summary="Revoke an API token (admin): refused everywhere within a second",
    )
    async def revoke_token(token_id: str) -> TokenView:
        return token_view(await tokens.revoke(token_id))

    return r


__all__ = [
    "BOOTSTRAP_ID",
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenRecord",
    "TokenStore",
    "iso",
    "parse_ttl",
    "tokens_router",
]
