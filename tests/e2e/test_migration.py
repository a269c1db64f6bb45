"""Live migration of a stateful task while data flows: nothing lost, nothing duplicated.

``io.generate`` (1,000 records/s, one key) -> ``stats.count_by_key`` -> ``io.file_sink``;
the counting task moves between three agents while the source keeps producing. The
sink must hold every seq exactly once, and the count on the line of seq i must be i + 1
(the operator's state went along with every move).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.errors import BucketNotFoundError

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import AgentSpec
from echo_shared.names import Names
from tests.conftest import PlatformFactory
from tests.harness.api import Api
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

FLEET = (
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-3", "fog", cpu=2.0, memory_mb=2048),
)
FOGS = ("fog-1", "fog-2", "fog-3")
FINISHED = {"completed", "failed", "rolled_back"}


def counting(out: Path, count: int, rate: float = 1000.0) -> dict[str, Any]:
    return {
        "name": "counting",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": rate, "fields": {"city": "nyc"}},
                "placement": {"device": "cloud-1"},
            },
            {
                "id": "count",
                "operator": "stats.count_by_key",
                "config": {"key": "city"},
                "placement": {"tier": "fog"},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "count"}, {"from": "count", "to": "sink"}],
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a sink's file: one still being written (read while the flow
    runs, as the polls do) has no newline yet and is left for the next read."""
    if not path.exists():
        return []
    data = path.read_bytes()
    done = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in done.splitlines() if line.strip()]


def check_exactly_once(out: Path, count: int) -> None:
    lines = read_jsonl(out)
    seqs = [r["seq"] for r in lines]
    dup = len(seqs) - len(set(seqs))
    missing = sorted(set(range(count)) - set(seqs))
    assert dup == 0 and not missing, f"{dup} duplicated, {len(missing)} missing (first {missing[:5]})"
    wrong = [r for r in lines if r["count"] != r["seq"] + 1 or r["key"] != "nyc"]
    assert not wrong, f"{len(wrong)} wrong counts, e.g. {wrong[:3]}"


def task(api: Api, df_id: str, task_id: str) -> dict[str, Any]:
    return next(t for t in api.dataflow(df_id)["tasks"] if t["id"] == task_id)


def migrate(api: Api, df_id: str, task_id: str, device: str | None = None) -> str:
    body = {"device": device} if device else None
    r = api.http.post(f"/api/v1/dataflows/{df_id}/tasks/{task_id}/migrate", json=body)
    assert r.status_code == 202, r.text
    mid: str = r.json()["migration"]
    return mid


def wait_migration(api: Api, mid: str, timeout: float = 30.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        m: dict[str, Any] = api.http.get(f"/api/v1/migrations/{mid}").json()
        return m if m.get("state") in FINISHED else None

    return wait_until(done, timeout=timeout, interval=0.05, what=f"migration {mid} to end")


def test_api_contract_and_fifty_migrations_exactly_once(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    total = 30_000
    df_id = api.submit(counting(out, total))
    api.wait_state(df_id, "running", timeout=30)
    base = f"/api/v1/dataflows/{df_id}/tasks"

    # the contract: clear errors, never a 5xx
    assert api.http.post("/api/v1/dataflows/df-000000000000/tasks/count/migrate").status_code == 404
    r = api.http.post(f"{base}/nope/migrate")
    assert r.status_code == 404 and "nope" in r.json()["detail"], r.text
    r = api.http.post(f"{base}/count/migrate", json={"device": "mars-1"})
    assert r.status_code == 422 and "mars-1" in r.text, r.text
    r = api.http.post(f"{base}/count/migrate", json={"device": 7, "speed": "fast"})
    assert r.status_code == 422, r.text
    assert {e["loc"] for e in r.json()["errors"]} >= {"body.device", "body.speed"}, r.text
    here = task(api, df_id, "count")["device"]
    r = api.http.post(f"{base}/count/migrate", json={"device": here})
    assert r.status_code == 409 and "already runs" in r.json()["detail"], r.text
    assert api.http.get("/api/v1/migrations/mig-000000000000").status_code == 404

    # the scheduler chooses when no device is named: another fog device
    m = wait_migration(api, migrate(api, df_id, "count"))
    assert m["state"] == "completed", m
    assert m["source"] == here and m["target"] in FOGS and m["target"] != here, m
    assert [s["name"] for s in m["steps"]] == ["place", "drain", "resume"]
    assert all(s["state"] == "done" and s["ms"] is not None for s in m["steps"]), m

    # 49 more, each to the next fog device, while records keep flowing
    done = 1
    downtime = []
    for target in itertools.cycle(FOGS):
        if done >= 50:
            break
        if target == task(api, df_id, "count")["device"]:
            continue
        assert task(api, df_id, "gen")["state"] == "running", "the source finished before 50 migrations"
        m = wait_migration(api, migrate(api, df_id, "count", target))
        assert m["state"] == "completed", m
        assert task(api, df_id, "count")["device"] == target
        downtime.append(sum(s["ms"] for s in m["steps"] if s["name"] in ("drain", "resume")))
        done += 1
    listed = api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json()
    assert len(listed) == 50 and all(x["state"] == "completed" for x in listed)

    api.wait_state(df_id, "completed", timeout=90)
    check_exactly_once(out, total)
    gens = task(api, df_id, "count")["generation"]
    assert gens >= 51, gens


def test_migrator_killed_mid_migration(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    total = 12_000
    df_id = api.submit(counting(out, total))
    api.wait_state(df_id, "running", timeout=30)
    here = task(api, df_id, "count")["device"]
    target = next(d for d in FOGS if d != here)
    mid = migrate(api, df_id, "count", target)
    platform.services["migrator"].kill()  # -9, somewhere inside the saga
    platform.services["migrator"] = platform.start_service("migrator")
    m = wait_migration(api, mid, timeout=45)
    assert m["state"] in ("completed", "rolled_back"), m
    where = task(api, df_id, "count")["device"]
    assert where == (target if m["state"] == "completed" else here)
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)


def test_rebalance_moves_only_what_changes(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    df_id = api.submit(counting(out, 8_000))
    api.wait_state(df_id, "running", timeout=30)
    r = api.http.post(f"/api/v1/dataflows/{df_id}/rebalance")
    assert r.status_code == 202, r.text
    body = r.json()
    # the same fleet, the same spec: the scheduler places it where it runs, nothing moves
    assert body == {"migrations": [], "moves": {}}, body
    assert api.http.post("/api/v1/dataflows/df-000000000000/rebalance").status_code == 404
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, 8_000)
    r = api.http.post(f"/api/v1/dataflows/{df_id}/rebalance")
    assert r.status_code == 409, r.text


async def state_objects(brokers: Brokers, bucket: str) -> list[str]:
    nc = await nats.connect(brokers.nats_url, **brokers.access().nats_options())
    try:
        store = await nc.jetstream().object_store(bucket)
        return sorted(o.name for o in await store.list())
    finally:
        await nc.close()


def test_large_state_goes_through_the_object_store(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    # every operator state counts as large here: it must travel through the object store
    platform, api = platform_factory(FLEET, env={"ECHO_STATE_INLINE_MAX_BYTES": "8"})
    out = tmp_path / "counts.jsonl"
    total = 8_000
    df_id = api.submit(counting(out, total))
    api.wait_state(df_id, "running", timeout=30)
    wait_until(lambda: task(api, df_id, "count")["records_in"] >= 1_500, timeout=30, what="1,500 counted")
    here = task(api, df_id, "count")["device"]
    target = next(d for d in FOGS if d != here)
    m = wait_migration(api, migrate(api, df_id, "count", target))
    assert m["state"] == "completed", m
    # pre-copy: its latest checkpoint's state went ahead to the target, the drain sent the rest
    drain = next(s for s in m["steps"] if s["name"] == "drain")
    assert f"its checkpoint staged on {target}" in drain["detail"], drain
    bucket = Names(platform.namespace).state_bucket
    names = asyncio.run(state_objects(platform.brokers, bucket))
    assert any(".count.1.drain." in n for n in names), names
    assert any(".count.1.ckpt." in n for n in names), names
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)


async def incremental_objects(brokers: Brokers, bucket: str) -> list[str]:
    """The state objects that are incremental checkpoints (changes on top of a base object)."""
    nc = await nats.connect(brokers.nats_url, **brokers.access().nats_options())
    try:
        try:
            store = await nc.jetstream().object_store(bucket)
        except BucketNotFoundError:
            return []  # made with the first large state
        found = []
        for info in await store.list():
            if ".ckpt." in info.name:
                with contextlib.suppress(Exception):  # deleted meanwhile
                    got = await store.get(info.name)
                    if (got.data or b"").startswith(b'{"$base"'):
                        found.append(info.name)
        return found
    finally:
        await nc.close()


def test_a_large_state_checkpoints_incrementally_and_moves_by_pre_copy(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    # ~0.3 MB of counts, large enough for incremental checkpoints; at 500 records/s a
    # second's changes are a twelfth of the keys, a small enough share to go as changes
    keys, total = 6_000, 12_000
    platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    spec = counting(out, total, rate=500)
    spec["tasks"].insert(
        1,
        {
            "id": "key",
            "operator": "core.map",
            "config": {"set": {"city": f"{'x' * 40!r} + str(seq % {keys})"}},
            "placement": {"device": "cloud-1"},
        },
    )
    spec["edges"] = [
        {"from": "gen", "to": "key"},
        {"from": "key", "to": "count"},
        {"from": "count", "to": "sink"},
    ]
    df_id = api.submit(spec)
    api.wait_state(df_id, "running", timeout=30)
    bucket = Names(platform.namespace).state_bucket
    wait_until(
        lambda: asyncio.run(incremental_objects(platform.brokers, bucket)),
        timeout=60,
        interval=0.5,
        what="an incremental checkpoint kept in the object store",
    )
    here = task(api, df_id, "count")["device"]
    target = next(d for d in FOGS if d != here)
    m = wait_migration(api, migrate(api, df_id, "count", target), timeout=60)
    assert m["state"] == "completed", m
    drain = next(s for s in m["steps"] if s["name"] == "drain")
    assert f"its checkpoint staged on {target}" in drain["detail"], drain
    api.wait_state(df_id, "completed", timeout=120)
    lines = read_jsonl(out)
    seqs = [r["seq"] for r in lines]
    assert len(seqs) == len(set(seqs)) == total, f"{len(seqs)} records, {len(set(seqs))} distinct of {total}"
    wrong = [r for r in lines if r["count"] != r["seq"] // keys + 1]
    assert not wrong, f"{len(wrong)} wrong counts (the state not carried), e.g. {wrong[:3]}"
