"""Console logins: one-time codes and cookie sessions, in Redis (owned by the master).

- A **code** is made by ``POST /api/v1/console/codes`` (``echoctl console``) for the caller's
  token: valid ``CODE_SECONDS``, used once (an atomic ``HSETNX used``), then kept an hour so a
  second use is told "already used" rather than "unknown".
- A **session** is made from a code or from an API token typed into the login form. Its id
  lives only in an HttpOnly, SameSite=Strict cookie (``COOKIE``); Redis keeps its SHA-256
  with the token id, role, CSRF secret and expiry (at most the token's own). Every request
  re-checks the token (revoked or expired: the session ends), cached ``CHECK_SECONDS``.
- Changing requests made with the cookie carry the session's CSRF secret in ``CSRF_HEADER``
  (the console's pages read it from ``GET /api/v1/console/session``, which another site's
  page cannot read).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from echo_shared.errors import NotFoundError
from echo_shared.names import Names

from ..errors import LoginRefused, TokenStoreUnavailable, Unauthenticated
from ..tokens import Principal, Role, TokenStore

CODE_SECONDS = 60.0
CODE_KEPT_SECONDS = 3600  # a used or expired code is remembered this long (for its reason)
CHECK_SECONDS = 1.0
COOKIE = "echo_console"
CSRF_HEADER = "x-echo-csrf"

# redeem a code atomically: unknown (0), already used (1), or its fields (first use)
_REDEEM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HSETNX', KEYS[1], 'used', ARGV[1]) == 0 then return {1} end
return {2, redis.call('HGET', KEYS[1], 'token'), redis.call('HGET', KEYS[1], 'role'),
        redis.call('HGET', KEYS[1], 'expires'), redis.call('HGET', KEYS[1], 'token_expires')}
"""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf: str
    expires: float


class ConsoleSessions:
    def __init__(
        self,
        redis: aioredis.Redis,
        names: Names,
        tokens: TokenStore,
        *,
        session_seconds: float = 8 * 3600.0,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.check_seconds = check_seconds
        self.redis = redis
        self.names = names
        self.tokens = tokens
        self.session_seconds = session_seconds
        self.clock = clock
        self._checked: dict[str, tuple[float, Session]] = {}

    # ------------------------------------------------------------------ codes

    async def issue_code(self, who: Principal) -> tuple[str, float]:
        """A one-time login code for ``who``'s token and role, and when it expires."""
        code = secrets.token_urlsafe(24)
        expires = self.clock() + CODE_SECONDS
        key = self.names.console_code_key(digest(code))
        fields: dict[Any, Any] = {
            "token": who.token_id,
            "role": who.role.value,
            "expires": repr(expires),
        }
        if who.expires is not None:
            fields["token_expires"] = repr(who.expires)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, CODE_KEPT_SECONDS)
                await pipe.execute()
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot store the login code: {e}") from e
        return code, expires

    async def redeem(self, code: str) -> tuple[str, Session]:
        """Exchange a code for a new session (its cookie value, the session); ``LoginRefused``
        naming why not (unknown, expired, already used)."""
        if not code or len(code) > 128:
            raise LoginRefused("this login link is not valid: ask for a new one (echoctl console)")
        now = self.clock()
        try:
            got = await self.redis.eval(_REDEEM, 1, self.names.console_code_key(digest(code)), repr(now))
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot check the login code: {e}") from e
        if got[0] == 0:
            raise LoginRefused("this login link is unknown or too old: ask for a new one (echoctl console)")
        if got[0] == 1:
            raise LoginRefused("this login link was already used: ask for a new one (echoctl console)")
        token_id, role, expires, token_expires = got[1:]  # the connection decodes replies
        if float(expires) < now:
            raise LoginRefused(
                f"this login link expired (links are valid {CODE_SECONDS:.0f} s): "
                "ask for a new one (echoctl console)"
            )
        who = Principal(token_id, Role(role), float(token_expires) if token_expires else None)
        return await self._open(who)

    # ------------------------------------------------------------------ sessions

    async def login(self, token: str) -> tuple[str, Session]:
        """A session for an API token typed into the login form."""
        try:
            who = await self.tokens.verify(token.strip())
        except Unauthenticated:
            raise LoginRefused("this token is unknown, expired or revoked") from None
        return await self._open(who)

    async def _open(self, who: Principal) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.session_seconds
        if who.expires is not None:
            expires = min(expires, who.expires)
        session = Session(who, secrets.token_urlsafe(24), expires)
        key = self.names.console_session_key(digest(sid))
        fields: dict[Any, Any] = {
            "token": who.token_id,
            "role": who.role.value,
            "csrf": session.csrf,
            "expires": repr(expires),
        }
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, max(1, math.ceil(expires - now)))
                await pipe.execute()
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot store the console session: {e}") from e
        return sid, session

    async def resolve(self, sid: str) -> Session | None:
        """The live session of a cookie value; None if unknown, expired, or its token is no
        longer valid (revoked or expired)."""
        if not sid or len(sid) > 128:
            return None
        now = time.monotonic()
        hit = self._checked.get(sid)
        if hit is not None and hit[0] > now and hit[1].expires > self.clock():
            return hit[1]
        key = self.names.console_session_key(digest(sid))
        try:
            raw = await self.redis.hgetall(key)
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot read the console session: {e}") from e
        fields: dict[str, str] = dict(raw)  # type: ignore[arg-type]  # the connection decodes
        if not fields or float(fields.get("expires", "0")) <= self.clock():
            self._checked.pop(sid, None)
            return None
        try:
            token = await self.tokens.get(fields["token"])
        except NotFoundError:
            token = None
        if token is None or token.revoked or (token.expires is not None and token.expires <= self.clock()):
            await self.end(sid)
            return None
        session = Session(
            Principal(fields["token"], Role(fields["role"]), token.expires),
            fields["csrf"],
            float(fields["expires"]),
        )
        if len(self._checked) > 10_000:
            self._checked.clear()
        if self.check_seconds > 0:
            self._checked[sid] = (now + self.check_seconds, session)
        return session

    async def end(self, sid: str) -> None:
        self._checked.pop(sid, None)
        try:
            await self.redis.delete(self.names.console_session_key(digest(sid)))
        except RedisError as e:
            raise TokenStoreUnavailable(f"cannot end the console session: {e}") from e
