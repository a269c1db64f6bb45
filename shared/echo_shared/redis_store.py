"""Redis connection helper: one client per service, retried at start, closed on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .credentials import Access
from .errors import BrokerUnavailable

log = logging.getLogger(__name__)


async def connect_redis(
    url: str, *, timeout: float = 30.0, max_connections: int = 64, access: Access | None = None
) -> aioredis.Redis:
    """Connect and ping, retrying until ``timeout`` (Redis may start after the service)."""
    # a blocking pool: a burst of concurrent work waits for a connection instead of failing.
    # After a Redis restart every pooled connection is dead: a command that meets one is
    # sent again on a fresh connection (a broken connection is found when writing to it, so
    # the command had not run), rather than failing once per stale connection in the pool.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        max_connections=max_connections,
        timeout=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError],
        **(access.redis_options() if access is not None else {}),
    )
    client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    while True:
        try:
            await client.ping()
            return client
        except (AuthenticationError, AuthorizationError) as e:
            await client.aclose()
            raise BrokerUnavailable(f"Redis at {url} refused our login: {e}") from e
        except ResponseError as e:
            if "NOAUTH" not in str(e) and "WRONGPASS" not in str(e):
                raise
            await client.aclose()
            raise BrokerUnavailable(f"Redis at {url} refused our login: {e}") from e
        except (RedisConnectionError, OSError) as e:
            if loop.time() > deadline:
                await client.aclose()
                raise BrokerUnavailable(f"Redis at {url} unreachable: {e}") from e
            log.info("waiting for Redis at %s: %s", url, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def fields(mapping: Mapping[str, str | int | float]) -> Mapping[Any, Any]:
    """A hash mapping as redis-py's (invariant, bytes-or-str keyed) signature wants it."""
    return mapping
