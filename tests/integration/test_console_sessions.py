"""Console logins against the real Redis: one-time codes (expire in 60 s, used once) and
sessions (bounded by their token's life, ended by its revocation or a logout)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from echo_master.console.sessions import CODE_SECONDS, ConsoleSessions
from echo_master.errors import LoginRefused
from echo_master.tokens import Role, TokenStore
from echo_shared.names import Names


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def stores(redis: aioredis.Redis, names: Names, clock: Clock) -> tuple[TokenStore, ConsoleSessions]:
    tokens = TokenStore(redis, names, cache_seconds=0, clock=clock)
    return tokens, ConsoleSessions(redis, names, tokens, session_seconds=3600, check_seconds=0, clock=clock)


async def refused(sessions: ConsoleSessions, code: str) -> str:
    with pytest.raises(LoginRefused) as e:
        await sessions.redeem(code)
    return str(e.value)


async def test_code_is_used_once(redis: aioredis.Redis, names: Names) -> None:
    clock = Clock()
    tokens, sessions = stores(redis, names, clock)
    _, secret = await tokens.create(Role.operator)
    who = await tokens.verify(secret)
    code, expires = await sessions.issue_code(who)
    assert expires == pytest.approx(clock.now + CODE_SECONDS)
    sid, session = await sessions.redeem(code)
    assert session.principal.role is Role.operator and session.principal.token_id == who.token_id
    assert await sessions.resolve(sid) == session
    assert "already used" in await refused(sessions, code)
    assert "unknown or too old" in await refused(sessions, "made-up-code")
    # neither the code nor the session id is stored as is
    dump = repr([await redis.hgetall(k) for k in await redis.keys(f"{names.namespace}:console:*")])
    dump += repr(await redis.keys(f"{names.namespace}:*"))
    assert code not in dump and sid not in dump


async def test_code_expires_after_a_minute(redis: aioredis.Redis, names: Names) -> None:
    clock = Clock()
    tokens, sessions = stores(redis, names, clock)
    _, secret = await tokens.create(Role.viewer)
    code, _ = await sessions.issue_code(await tokens.verify(secret))
    clock.now += CODE_SECONDS + 0.5
    assert "expired" in await refused(sessions, code)


async def test_session_ends_with_its_token(redis: aioredis.Redis, names: Names) -> None:
    clock = Clock()
    tokens, sessions = stores(redis, names, clock)
    _, secret = await tokens.create(Role.admin, ttl=600)
    sid, session = await sessions.login(secret)
    assert session.expires == pytest.approx(clock.now + 600)  # not the session's hour: the token's life
    clock.now += 599
    assert await sessions.resolve(sid) is not None
    clock.now += 2
    assert await sessions.resolve(sid) is None
    # revoked: every session of the token ends at its next request
    rec2, secret2 = await tokens.create(Role.operator)
    sid2, _ = await sessions.login(secret2)
    assert await sessions.resolve(sid2) is not None
    await tokens.revoke(rec2.id)
    assert await sessions.resolve(sid2) is None
    # logged out
    _, secret3 = await tokens.create(Role.viewer)
    sid3, _ = await sessions.login(secret3)
    await sessions.end(sid3)
    assert await sessions.resolve(sid3) is None
    with pytest.raises(LoginRefused):
        await sessions.login("echo_not-a-token")
