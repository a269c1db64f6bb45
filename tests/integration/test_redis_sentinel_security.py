"""Redis with Sentinel as the dev stack (``--ha``) and the chaos tests run it: TLS only,
nobody anonymous on any Redis or sentinel, a service's login may only ask a sentinel where
the primary is, the replication and Sentinel logins hold no data rights, and no secret is on
a command line or in a file others can read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from echo_cli.devstack import Brokers
from echo_cli.devstack.brokers import start_brokers
from echo_cli.devstack.redis_ha import node_address, sentinel_client
from echo_shared.brokerauth import REDIS_REPLICATION_USER, REDIS_SENTINEL_USER
from echo_shared.ha_configs import PRIMARY_NAME
from echo_shared.redis_store import connect_redis, sentinel_address
from tests.harness.waiting import wait_until


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    b = start_brokers(tmp_path_factory.mktemp("redis-ha"), tester=True, redis_ha=True)
    try:
        yield b
    finally:
        b.stop()


def client(b: Brokers, name: str, **login: str) -> redis.Redis:
    assert b.bundle is not None
    host, port = b.redis_nodes[name].removeprefix("rediss://").rsplit(":", 1)
    return redis.Redis(
        host=host,
        port=int(port),
        ssl=True,
        ssl_ca_certs=str(b.bundle.ca_file),
        socket_timeout=3,
        decode_responses=True,
        **login,
    )


def service_login(b: Brokers, identity: str) -> dict[str, str]:
    a = b.access(identity)
    assert a.redis is not None
    return {"username": a.redis.username, "password": a.redis.password}


def test_the_url_names_the_sentinels(ha: Brokers) -> None:
    assert ha.redis_url.startswith("rediss+sentinel://")
    hosts, primary, db = sentinel_address(ha.redis_url)
    assert len(hosts) == 3 and primary == PRIMARY_NAME and db == 0


def test_nobody_anonymous_on_any_redis_or_sentinel(ha: Brokers) -> None:
    for name in ("redis", "redis-2", "sentinel-1", "sentinel-2", "sentinel-3"):
        with client(ha, name) as c, pytest.raises((AuthenticationError, ResponseError)) as e:
            c.ping()
        assert any(w in str(e.value) for w in ("NOAUTH", "Authentication", "authenticated")), (name, e.value)
        with client(ha, name, username="default", password="") as c, pytest.raises(AuthenticationError):
            c.ping()


def test_a_service_may_only_look_the_primary_up_on_a_sentinel(ha: Brokers) -> None:
    with client(ha, "sentinel-1", **service_login(ha, "registry")) as s:
        addr = s.sentinel_get_master_addr_by_name(PRIMARY_NAME)
        assert int(addr[1]) == int(ha.redis_nodes["redis"].rsplit(":", 1)[1])
        for forbidden in (
            ("SENTINEL", "FAILOVER", PRIMARY_NAME),
            ("SENTINEL", "SET", PRIMARY_NAME, "quorum", "1"),
            ("SENTINEL", "REMOVE", PRIMARY_NAME),
            ("SENTINEL", "RESET", "*"),
            ("SENTINEL", "FLUSHCONFIG"),
            ("ACL", "LIST"),
        ):
            with pytest.raises(NoPermissionError):
                s.execute_command(*forbidden)


def test_internal_logins_hold_no_data_rights(ha: Brokers) -> None:
    assert ha.bundle is not None
    internal = ha.bundle.redis_internal()
    for user, password in (
        (REDIS_REPLICATION_USER, internal["replication"]),
        (REDIS_SENTINEL_USER, internal["sentinel"]),
    ):
        with client(ha, "redis", username=user, password=password) as c:
            assert c.ping()
            for command in (("GET", "echo:token:x"), ("SET", "x", "1"), ("KEYS", "*")):
                with pytest.raises(NoPermissionError):
                    c.execute_command(*command)


async def test_a_service_reaches_the_primary_through_the_sentinels_with_its_own_rights(ha: Brokers) -> None:
    r = await connect_redis(ha.redis_url, access=ha.access("registry"), timeout=10)
    try:
        await r.set("echo:device:sentinel-test", "1")
        with pytest.raises(NoPermissionError):
            await r.get("echo:token:anything")  # the registry's keys only, as on one Redis
    finally:
        await r.aclose()
    with client(ha, "redis-2", **service_login(ha, "registry")) as replica:  # replicated
        assert replica.get("echo:device:sentinel-test") in ("1", None)


def test_no_secret_on_a_command_line_or_readable_by_others(ha: Brokers) -> None:
    assert ha.bundle is not None
    secrets = list(ha.bundle.redis_internal().values())
    for name in ("redis", "redis-2", "sentinel-1", "sentinel-2", "sentinel-3"):
        cmdline = " ".join(psutil.Process(ha.processes[name].popen.pid).cmdline())
        assert not any(s in cmdline for s in secrets), f"{name}'s command line holds a password"
    files = [ha.bundle.redis_ha_file, *Path(ha.workdir).glob("redis-ha/*.conf")]
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f"{f} is readable by others"
    # a sentinel rewrites its configuration (what it learns) with its own umask: its
    # directory keeps others out
    homes = list(Path(ha.workdir).glob("sentinel-*"))
    assert len(files) >= 2 and len(homes) == 3, (files, homes)
    for home in homes:
        assert home.stat().st_mode & 0o077 == 0, f"{home} is open to others"


async def test_a_restarted_stack_keeps_what_was_written_after_a_failover(tmp_path: Path) -> None:
    """The primary dies, the replica is promoted and takes writes; the stack is stopped and
    started again (the dev stack's life): the promoted one leads again, nothing is lost."""

    async def write(b: Brokers, value: str) -> None:
        r = await connect_redis(b.redis_url, access=b.access("master"), timeout=20)
        try:
            async with asyncio.timeout(30):
                while True:  # through the failover: the first writes may meet the dead primary
                    try:
                        await r.set("echo:df:restart", value)
                        return
                    except (RedisConnectionError, ReadOnlyError):
                        await asyncio.sleep(0.1)
        finally:
            await r.aclose()

    b = start_brokers(tmp_path, tester=True, redis_ha=True, persistent=True)
    try:
        await write(b, "before")
        b.kill("redis")
        await write(b, "after the failover")
        b.restart("redis")
        wait_until(lambda: role(b, "redis") == "slave", timeout=30, what="the old primary a replica")
    finally:
        b.stop()
    again = start_brokers(tmp_path, tester=True, redis_ha=True, persistent=True)
    try:
        assert role(again, "redis-2") == "master" and role(again, "redis") == "slave"
        r = await connect_redis(again.redis_url, access=again.access("master"), timeout=20)
        try:
            assert await r.get("echo:df:restart") == "after the failover"
        finally:
            await r.aclose()
    finally:
        again.stop()


def role(b: Brokers, name: str) -> str:
    assert b.bundle is not None
    with sentinel_client(*node_address(b.redis_nodes[name]), b.bundle) as c:
        try:
            return str(c.role()[0])
        except redis.RedisError:
            return "down"
