"""Async integration tests against the real brokers; leaked asyncio tasks fail the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from echo_cli.devstack import Brokers
from echo_shared.names import Names
from echo_shared.natsauth import AuthCallout
from tests.conftest import unique_namespace
from tests.integration.nats_auth_server import Devices, Server, start_server, stop_server


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for _ in range(20):  # tasks finishing their last step after close()
        if not leaked:
            break
        await asyncio.sleep(0.01)
        leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"leaked asyncio tasks: {leaked}"


@pytest.fixture
def names() -> Names:
    return Names(unique_namespace())


@pytest.fixture
async def redis(brokers: Brokers) -> AsyncIterator[aioredis.Redis]:
    r: aioredis.Redis = aioredis.from_url(
        brokers.redis_url, decode_responses=True, **brokers.access().redis_options()
    )
    try:
        yield r
    finally:
        await r.aclose()


# ------------------------------------------------------------------ the NATS auth callout tests


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = await start_server(tmp_path / "nats")
    try:
        yield s
    finally:
        await stop_server(s)


@pytest.fixture
def devices() -> Devices:
    return Devices()


@pytest.fixture
async def callout(server: Server, devices: Devices) -> AsyncIterator[AuthCallout]:
    nc = await server.login("callout")
    async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize) as co:
        yield co
