"""The API token store against the real Redis: create, verify, expire, revoke, bootstrap."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from echo_cli.devstack.processes import free_port
from echo_master.errors import TokenStoreUnavailable, Unauthenticated
from echo_master.tokens import BOOTSTRAP_ID, Role, TokenStore, parse_ttl
from echo_shared.errors import NotFoundError
from echo_shared.names import Names


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def refused(store: TokenStore, secret: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as e:
        await store.verify(secret)
    assert e.value.error == "invalid_token"
    return e.value


async def test_create_verify_list_revoke(redis: aioredis.Redis, names: Names) -> None:
    store = TokenStore(redis, names, cache_seconds=0)
    rec, secret = await store.create(Role.operator, name="ci", creator="bootstrap")
    assert secret.startswith("echo_") and len(secret) > 40
    assert rec.role is Role.operator and rec.expires is None and not rec.revoked
    p = await store.verify(secret)
    assert (p.token_id, p.role) == (rec.id, Role.operator)
    # only the digest is stored: the secret appears nowhere in Redis
    keys = await redis.keys(f"{names.namespace}:*")
    r: Any = redis
    read = {"hash": r.hgetall, "string": r.get, "zset": lambda k: r.zrange(k, 0, -1)}
    dump = [await read[str(await r.type(k))](k) for k in keys]
    assert len(dump) == 3  # the record, the digest -> id, the index
    assert secret not in repr(dump) and secret not in repr(keys)
    assert await redis.get(names.token_digest_key(hashlib.sha256(secret.encode()).hexdigest())) == rec.id
    assert [t.id for t in await store.list()] == [rec.id]

    revoked = await store.revoke(rec.id)
    assert revoked.revoked
    err = await refused(store, secret)
    assert err.token_id == rec.id and "revoked" in str(err)
    assert (await store.revoke(rec.id)).revoked  # idempotent
    assert (await store.list())[0].revoked
    with pytest.raises(NotFoundError):
        await store.revoke("tok-nope")
    assert not await redis.exists(names.token_key("tok-nope"))  # no partial record left behind
    err = await refused(store, "echo_" + "x" * 43)
    assert err.token_id is None and "unknown" in str(err)


async def test_expiry(redis: aioredis.Redis, names: Names) -> None:
    clock = Clock()
    store = TokenStore(redis, names, cache_seconds=1.0, clock=clock)
    rec, secret = await store.create(Role.viewer, ttl=60)
    assert rec.expires == pytest.approx(clock.now + 60)
    assert (await store.verify(secret)).role is Role.viewer
    clock.now += 61  # the cached answer knows the expiry too
    err = await refused(store, secret)
    assert "expired" in str(err) and err.token_id == rec.id
    ttl = await redis.ttl(names.token_key(rec.id))
    assert 0 < ttl <= 60 + 7 * 86400 + 1  # Redis drops it a week after expiry


async def test_a_revocation_elsewhere_takes_effect_within_a_second(
    redis: aioredis.Redis, names: Names
) -> None:
    here = TokenStore(redis, names, cache_seconds=1.0)
    there = TokenStore(redis, names, cache_seconds=1.0)  # another master replica
    rec, secret = await here.create(Role.admin)
    await here.verify(secret)  # cached here
    await there.revoke(rec.id)
    t0 = time.monotonic()
    while True:
        try:
            await here.verify(secret)
        except Unauthenticated:
            break
        assert time.monotonic() - t0 < 1.5, "still accepted more than a second after the revocation"
        await asyncio.sleep(0.02)
    assert time.monotonic() - t0 <= 1.1


async def test_bootstrap_is_idempotent_follows_the_file_and_stays_revoked(
    redis: aioredis.Redis, names: Names
) -> None:
    store = TokenStore(redis, names, cache_seconds=0)
    first = await store.register_bootstrap("echo_first")
    assert (first.id, first.role) == (BOOTSTRAP_ID, Role.admin)
    again = await store.register_bootstrap("echo_first")  # a restart: same record
    assert again.created == first.created
    assert (await store.verify("echo_first")).token_id == BOOTSTRAP_ID
    await store.register_bootstrap("echo_second")  # the file changed
    await refused(store, "echo_first")
    assert (await store.verify("echo_second")).role is Role.admin
    await store.revoke(BOOTSTRAP_ID)
    await store.register_bootstrap("echo_second")  # a restart does not revive a revoked token
    await refused(store, "echo_second")
    await store.register_bootstrap("echo_third")  # a new token in the file does
    assert (await store.verify("echo_third")).token_id == BOOTSTRAP_ID
    assert [t.id for t in await store.list()] == [BOOTSTRAP_ID]


async def test_concurrent_bootstraps_leave_one_record(redis: aioredis.Redis, names: Names) -> None:
    stores = [TokenStore(redis, names, cache_seconds=0) for _ in range(5)]
    await asyncio.gather(*(s.register_bootstrap("echo_same") for s in stores))
    assert [t.id for t in await stores[0].list()] == [BOOTSTRAP_ID]
    assert (await stores[0].verify("echo_same")).role is Role.admin


async def test_redis_down_is_unavailable_not_unauthenticated(names: Names) -> None:
    dead: aioredis.Redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", decode_responses=True)
    try:
        store = TokenStore(dead, names)
        with pytest.raises(TokenStoreUnavailable):
            await store.verify("echo_anything")
        with pytest.raises(TokenStoreUnavailable):
            await store.create(Role.viewer)
    finally:
        await dead.aclose()


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2", 2), (1.5, 1.5)]
)
def test_parse_ttl(value: str | float, seconds: float) -> None:
    assert parse_ttl(value) == seconds


@pytest.mark.parametrize("value", ["abc", "-5", -5, 0, "0s", "", "5 weeks", True, float("nan"), 1e12])
def test_parse_ttl_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ttl(value)  # type: ignore[arg-type]
