"""Redis with Sentinel: the primary killed (-9) under steady flow, the replica promoted.

The stack's Redis is a primary, a replica and three sentinels; every service reaches it
through the sentinels (``rediss+sentinel://``). The primary is killed while the chaos
dataflow runs at 500 records/s and is not started again until the sentinels have promoted
the replica and the platform works on it: the API answers again by itself (no service
restarted), every record arrives once with its count right, the dataflow completes, no
device changes status, and the leaders' leases carry on. The old primary then comes back
and is made a replica of the new one; every process is alive at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from echo_cli.devstack.redis_ha import node_address, sentinel_client
from echo_shared.ha_configs import PRIMARY_NAME
from tests.chaos.conftest import Stack, running_stack
from tests.chaos.test_broker_outages import converged, steady, tracebacks
from tests.e2e.test_migration import read_jsonl
from tests.harness.waiting import wait_until

# the sentinels judge the primary down after 1.5 s of silence, agree and promote: ~2-4 s
# measured; the bound catches a platform that does not follow the promotion by itself
MAX_API_OUTAGE = 15.0


@pytest.fixture
def sentinel_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from running_stack(tmp_path, request, redis_ha=True, env={"ECHO_LEADER_TTL": "5"})


def primary_port(s: Stack) -> int:
    """Where the sentinels say the primary is (asked as the sentinels' own login)."""
    b = s.brokers.bundle
    assert b is not None
    with sentinel_client(*node_address(s.brokers.redis_nodes["sentinel-1"]), b) as c:
        addr = c.sentinel_get_master_addr_by_name(PRIMARY_NAME)
    assert addr, "the sentinels name no primary"
    return int(addr[1])


def node_port(s: Stack, name: str) -> int:
    return int(s.brokers.redis_nodes[name].rsplit(":", 1)[1])


@pytest.mark.timeout(300)
def test_the_redis_primary_killed_under_flow(sentinel_stack: Stack, tmp_path: Path) -> None:
    s = sentinel_stack
    assert s.brokers.redis_url.startswith("rediss+sentinel://")
    assert primary_port(s) == node_port(s, "redis")
    # 60 s at 500/s: the replica's first sync may take half of that on a loaded machine
    out, total = tmp_path / "out.jsonl", 30_000
    df_id = steady(s, out, total)
    before = s.api.devices()
    traces_before = tracebacks(s)
    # the replica holds what was written (Redis delays a replica's first full sync by a few
    # seconds): a primary killed before that leaves the sentinels nothing to promote but an
    # empty replica (seen in CI: the dataflow gone, the API 404)
    written = replication(s)[0]  # what the primary holds now (it goes on writing under flow)
    wait_until(
        lambda: replication(s)[1] >= written, timeout=30, interval=0.1, what="the replica caught up"
    )

    at_kill = len(read_jsonl(out))
    s.brokers.kill("redis")
    killed = time.monotonic()
    wait_until(
        lambda: primary_port(s) == node_port(s, "redis-2"),
        timeout=30,
        interval=0.1,
        what="the sentinels promoting the replica",
    )
    promoted = time.monotonic() - killed
    wait_until(  # the API reads and writes through the new primary, nobody restarted
        lambda: s.api.http.get(f"/api/v1/dataflows/{df_id}").status_code == 200,
        timeout=MAX_API_OUTAGE,
        interval=0.1,
        what="the API answering from the promoted replica",
    )
    api_back = time.monotonic() - killed
    mid = len(read_jsonl(out))
    print(f"promoted after {promoted:.2f} s; the API answered again after {api_back:.2f} s; {mid} records")
    assert at_kill < total, "the dataflow ended before the primary was killed: nothing was tested under flow"

    s.api.wait_state(df_id, "completed", timeout=120)  # while the old primary is still down
    s.brokers.restart("redis")  # comes back; the sentinels make it a replica of the new one
    wait_until(
        lambda: redis_role(s, "redis") == "slave",
        timeout=30,
        what="the old primary rejoining as a replica",
    )
    converged(s, df_id, out, total, before)
    assert tracebacks(s) == traces_before, "a service logged a traceback over the failover"
    for name, p in {**s.platform.services, **s.platform.agents, **s.brokers.processes}.items():
        assert p.alive(), f"{name} exited"


def replication(s: Stack) -> tuple[int, int]:
    """The primary's replication offset, and the lowest offset a replica acknowledged (-1:
    no replica connected). A replica acknowledges once a second, so under steady writes it
    is always a little behind the primary's current offset: wait for it to pass an offset
    read earlier, not to equal the current one."""
    b = s.brokers.bundle
    assert b is not None
    with sentinel_client("127.0.0.1", node_port(s, "redis"), b) as primary:
        role = primary.role()  # ['master', offset, [[host, port, acked offset], ...]]
    offset, replicas = int(role[1]), role[2]
    return offset, min((int(r[2]) for r in replicas), default=-1)


def redis_role(s: Stack, name: str) -> str:
    b = s.brokers.bundle
    assert b is not None
    with sentinel_client("127.0.0.1", node_port(s, name), b) as c:
        try:
            return str(c.role()[0])
        except redis.RedisError:
            return "down"
