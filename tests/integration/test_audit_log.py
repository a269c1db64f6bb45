"""The audit trail against the real Redis: a capped stream, newest first, filtered by time."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from echo_cli.devstack.processes import free_port
from echo_master.audit import AuditLog, parse_since
from echo_master.errors import AuditUnavailable
from echo_shared.errors import SpecError
from echo_shared.names import Names


async def test_record_and_read_newest_first(redis: aioredis.Redis, names: Names) -> None:
    now = [1_700_000_000.0]
    audit = AuditLog(redis, names, clock=lambda: now[0])
    await audit.record(
        "POST /api/v1/dataflows", result=201, token="tok-1", role="operator",
        target={"dataflow": "df-1"}, client="10.0.0.7",
    )  # fmt: skip
    await audit.record(
        "device.revoke", result="ok", token="bootstrap", role="admin", target={"device": "e-1"}
    )
    entries = await audit.recent()
    assert [e.action for e in entries] == ["device.revoke", "POST /api/v1/dataflows"]
    post = entries[1]
    assert (post.token, post.role, post.result, post.client) == ("tok-1", "operator", 201, "10.0.0.7")
    assert post.target == {"dataflow": "df-1"}
    assert post.time == "2023-11-14T22:13:20.000Z"
    assert entries[0].result == "ok" and entries[0].client is None
    assert len(await audit.recent(limit=1)) == 1


async def test_since_filters_by_entry_time(redis: aioredis.Redis, names: Names) -> None:
    audit = AuditLog(redis, names)
    first = await audit.record("a", result=200)
    second = await audit.record("b", result=200)
    t_second = int(second.split("-")[0]) / 1000
    got = await audit.recent(since=t_second)
    assert "b" in [e.action for e in got]
    if int(first.split("-")[0]) < int(second.split("-")[0]):
        assert "a" not in [e.action for e in got]
    assert await audit.recent(since=t_second + 3600) == []


async def test_the_stream_is_capped(redis: aioredis.Redis, names: Names) -> None:
    audit = AuditLog(redis, names, max_entries=50)
    for i in range(1000):
        await audit.record(f"POST /x/{i}", result=200)
    length = await redis.xlen(names.audit_key)
    assert 50 <= length < 1000  # MAXLEN ~: trimmed in whole nodes, never below the cap
    assert (await audit.recent(limit=1))[0].action == "POST /x/999"


async def test_redis_down_raises_a_typed_error(names: Names) -> None:
    dead: aioredis.Redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", decode_responses=True)
    try:
        with pytest.raises(AuditUnavailable):
            await AuditLog(dead, names).record("x", result=200)
    finally:
        await dead.aclose()


def test_parse_since() -> None:
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0  # no zone: UTC
    assert parse_since("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
    with pytest.raises(SpecError) as e:
        parse_since("yesterday")
    assert e.value.problems[0].loc == "query.since"
