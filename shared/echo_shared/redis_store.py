"""Redis connection helper: one client per service, retried at start, closed on shutdown.

``ECHO_REDIS_URL`` is one Redis (``redis://`` or, TLS, ``rediss://host:port/db``) or, for high
availability, its sentinels: ``redis+sentinel://h1:p1,h2:p2,h3:p3/<primary name>/<db>``
(``rediss+sentinel://`` for TLS). With sentinels, the client asks them where the primary
is, and asks again when a connection fails or the server it reaches turned replica (a
failover): the service carries on against the promoted replica. The same login works for
the sentinels (they let it look the primary up, nothing more) and for Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import RedisSSLContext
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .credentials import Access, is_tls_url
from .errors import BrokerUnavailable
from .urls import redacted

log = logging.getLogger(__name__)


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
POOL_WAIT = 10.0  # seconds a command waits for a free pooled connection


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The primary's connections, found through the sentinels, in a pool that waits for a
    free connection (as with one Redis) instead of failing at once when all are busy."""


class _OneTLSContext:
    """For redis-py's TLS connections: every connection of the process with the same TLS
    settings (and the same certificate files, by modification time: a rotated file makes
    a new one) shares one TLS context. redis-py builds a context per connection, loading
    the system's CA store each time (~20 ms of CPU), which a burst that grows the pool to
    64 connections paid 64 times, in the middle of a deployment."""

    _shared: ClassVar[dict[tuple[Any, ...], RedisSSLContext]] = {}
    ssl_context: RedisSSLContext

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.ssl_context
        key = (
            c.keyfile,
            c.certfile,
            _mtime(c.certfile),
            c.cert_reqs,
            c.ca_certs,
            _mtime(c.ca_certs),
            c.ca_data,
            c.ca_path,
            c.check_hostname,
            c.min_version,
            c.ciphers,
            c.password,
            tuple(c.include_verify_flags or ()),
            tuple(c.exclude_verify_flags or ()),
        )
        self.ssl_context = self._shared.setdefault(key, c)


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


class _SSLConnection(_OneTLSContext, aioredis.SSLConnection):
    pass


class _SentinelSSLConnection(_OneTLSContext, SentinelManagedSSLConnection):
    pass


def _share_tls_context(pool: aioredis.ConnectionPool) -> None:
    if pool.connection_class is SentinelManagedSSLConnection:
        pool.connection_class = _SentinelSSLConnection
    elif pool.connection_class is aioredis.SSLConnection:
        pool.connection_class = _SSLConnection


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def sentinel_address(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """``(sentinels, primary name, db)`` of a ``redis+sentinel://`` URL (``ValueError`` if bad:
    its message names the bad part, never the whole URL, which could hold a password)."""
    return _sentinel_address(urlsplit(url))


def _sentinel_address(parts: SplitResult) -> tuple[list[tuple[str, int]], str, int]:
    # any "@" (a user:password@, whole or cut by a "/", "?" or "#" in the password): refused
    # rather than dropped, and the parts below (which may hold a piece of it) never shown
    if "@" in parts.geturl():
        raise ValueError(
            "a sentinel URL holds no user or password: the login comes from the credentials "
            "file (ECHO_CREDENTIALS_FILE)"
        )
    hosts = []
    for item in parts.netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a sentinel is host:port, not {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"a sentinel URL's path is /<primary name>[/<db>], not {parts.path!r}")
    return hosts, path[0], int(path[1]) if len(path) == 2 else 0


def _client(url: str, max_connections: int, access: Access | None) -> aioredis.Redis:
    login = access.redis_options() if access is not None else {}  # Redis' and the sentinels'
    # After a Redis restart every pooled connection is dead: a command that meets one is
    # sent again on a fresh connection (a broken connection is found when writing to it, so
    # the command had not run), rather than failing once per stale connection in the pool.
    options: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 10,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError],
        **login,
    }
    parts = urlsplit(url)
    if parts.scheme in SENTINEL_SCHEMES:
        hosts, primary, db = _sentinel_address(parts)
        tls = is_tls_url(url)
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={**login, "ssl": tls, "socket_timeout": 2.0}, socket_timeout=5.0
        )
        client: aioredis.Redis = sentinels.master_for(
            primary,
            connection_pool_class=_BlockingSentinelPool,
            db=db,
            ssl=tls,
            max_connections=max_connections,
            timeout=POOL_WAIT,
            **options,
        )
        _share_tls_context(client.connection_pool)
        return client
    # a blocking pool: a burst of concurrent work waits for a connection instead of failing
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT, **options
    )
    _share_tls_context(pool)
    return aioredis.Redis(connection_pool=pool)


async def connect_redis(
    url: str, *, timeout: float = 30.0, max_connections: int = 64, access: Access | None = None
) -> aioredis.Redis:
    """Connect and ping, retrying until ``timeout`` (Redis may start after the service)."""
    client = _client(url, max_connections, access)
    shown = redacted(url)  # a login in the URL never reaches a log
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    while True:
        try:
            await client.ping()
            return client
        except (AuthenticationError, AuthorizationError) as e:
            await client.aclose()
            raise BrokerUnavailable(f"Redis at {shown} refused our login: {e}") from e
        except ResponseError as e:
            if "NOAUTH" not in str(e) and "WRONGPASS" not in str(e):
                raise
            await client.aclose()
            raise BrokerUnavailable(f"Redis at {shown} refused our login: {e}") from e
        except (RedisConnectionError, OSError) as e:
            if loop.time() > deadline:
                await client.aclose()
                raise BrokerUnavailable(f"Redis at {shown} unreachable: {e}") from e
            log.info("waiting for Redis at %s: %s", shown, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def fields(mapping: Mapping[str, str | int | float]) -> Mapping[Any, Any]:
    """A hash mapping as redis-py's (invariant, bytes-or-str keyed) signature wants it."""
    return mapping
