"""Replicated services.

Two migrator replicas: one leads (runs the sagas), the other stands by. The leader is killed
(-9) in the middle of a migration: the standby takes over within the lease's TTL plus one
second, resumes the saga from what was recorded, the migration completes, and the sink holds
every record exactly once. Two scheduler replicas (stateless, a NATS queue group): one killed
as a dataflow is submitted, the other places it."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from echo_cli.devstack.platform import Platform
from tests.conftest import PlatformFactory
from tests.e2e.test_migration import FLEET, FOGS, check_exactly_once, counting, migrate, task, wait_migration
from tests.harness.api import Api
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

TTL = 2.0


def leader_since(log: Path) -> float | None:
    """When this replica last became the leader (wall clock, from its log), if it did."""
    at = None
    for line in log.read_text(errors="replace").splitlines():
        if "leader now" in line:
            at = datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
    return at


def leader_and_standby(platform: Platform, name: str) -> dict[str, Path]:
    """Wait for ``name``'s first replica to lead, start a second one and wait for it to stand
    by; the two replicas' logs."""
    logs = {n: platform.logs / f"{n}.log" for n in (name, f"{name}-2")}
    wait_until(lambda: leader_since(logs[name]), timeout=30, what=f"the first {name} leading")
    platform.start_replica(name, 2)
    wait_until(
        lambda: logs[f"{name}-2"].exists() and "standing by" in logs[f"{name}-2"].read_text(),
        timeout=30,
        what=f"the second {name} standing by",
    )
    return logs


def took_over(logs: dict[str, Path], name: str, killed_at: float) -> float:
    """Seconds from the leader's kill until ``name``'s second replica led; at most the TTL
    plus one second."""
    took: float = wait_until(
        lambda: (t := leader_since(logs[f"{name}-2"])) and t - killed_at,
        timeout=TTL + 10,
        what=f"the standby {name} leading",
    )
    print(f"the standby {name} led {took:.2f} s after the kill (TTL {TTL:g} s)")
    assert took <= TTL + 1.0, f"the standby {name} took over after {took:.2f} s (TTL {TTL:g} s)"
    return took


def test_a_standby_migrator_takes_over_a_migration_when_the_leader_dies(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(FLEET, env={"ECHO_LEADER_TTL": str(TTL)})
    logs = leader_and_standby(platform, "migrator")
    out, total = tmp_path / "counts.jsonl", 20_000
    df_id = api.submit(counting(out, total, rate=1000))
    api.wait_state(df_id, "running", timeout=30)
    wait_until(lambda: task(api, df_id, "count")["records_in"] >= 2_000, timeout=30, what="counting")
    source = task(api, df_id, "count")["device"]
    target = next(f for f in FOGS if f != source)
    mid = migrate(api, df_id, "count", target)
    platform.services["migrator"].kill()  # mid-migration: the saga is under way or just recorded
    killed_at = time.time()
    took_over(logs, "migrator", killed_at)
    m = wait_migration(api, mid, timeout=60)
    assert m["state"] == "completed", m
    assert task(api, df_id, "count")["device"] == target
    api.wait_state(df_id, "completed", timeout=90)
    check_exactly_once(out, total)
    assert platform.services["migrator-2"].alive()


def test_a_deployment_goes_on_when_one_of_two_schedulers_dies(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """Schedulers are stateless replicas in a queue group: one killed (-9) right as a dataflow is
    submitted, the other places it (a request lost with the dead one is asked again)."""
    platform, api = platform_factory(FLEET)
    second = platform.start_replica("scheduler", 2)
    wait_until(
        lambda: "scheduler ready" in (platform.logs / "scheduler-2.log").read_text(errors="replace"),
        timeout=30,
        what="the second scheduler ready",
    )
    out, total = tmp_path / "counts.jsonl", 3_000
    df_id = api.submit(counting(out, total, rate=2000))
    platform.services["scheduler"].kill()
    api.wait_state(df_id, "running", "completed", timeout=60)
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)
    assert second.alive()
    # and the next one too, with only the second replica left
    out2 = tmp_path / "counts2.jsonl"
    df2 = api.submit(counting(out2, total, rate=2000))
    api.wait_state(df2, "completed", timeout=60)
    check_exactly_once(out2, total)


def test_a_standby_registry_takes_over_liveness_and_heartbeats(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """Two registries: the leader (which records heartbeats and judges liveness) is killed (-9)
    under a running dataflow; the standby leads within the TTL plus one second, heartbeats are
    recorded again, no device changes status, and the dataflow completes exactly once."""
    platform, api = platform_factory(FLEET, env={"ECHO_LEADER_TTL": str(TTL)})
    logs = leader_and_standby(platform, "registry")
    out, total = tmp_path / "counts.jsonl", 15_000
    df_id = api.submit(counting(out, total, rate=1000))
    api.wait_state(df_id, "running", timeout=30)
    before = api.devices()
    platform.services["registry"].kill()
    killed_at = time.time()
    took = took_over(logs, "registry", killed_at)
    # heartbeats are recorded again: every device's last heartbeat moves past the takeover
    wait_until(
        lambda: all(d["last_heartbeat"] > killed_at + took for d in api.devices().values()),
        timeout=10,
        what="heartbeats recorded by the new leader",
    )
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)
    after = api.devices()
    for name, d in after.items():
        assert d["status"] == "online" and d["status_since"] == before[name]["status_since"], (name, d)


def test_a_standby_master_serves_the_api_and_takes_over_a_deployment_when_the_leader_dies(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """Two masters: both serve the API, one leads (reconciles, applies the agents' reports).
    A dataflow is submitted to the standby's API and the leader is killed (-9) at once, in the
    middle of its deployment: the standby leads within the TTL plus one second and finishes
    the deployment without a second command for any task (every task runs its first
    generation, started once), and the sink gets every record exactly once."""
    platform, api = platform_factory(FLEET, env={"ECHO_LEADER_TTL": str(TTL)})
    logs = leader_and_standby(platform, "master")
    standby = Api(platform.replica_api_url(2), platform.admin_token, platform.api_verify)
    try:
        health = wait_until(lambda: standby.http.get("/healthz").json(), timeout=30, what="the standby's API")
        assert health["leader"] is False and api.http.get("/healthz").json()["leader"] is True

        out, total = tmp_path / "counts.jsonl", 5_000
        spec = counting(out, total, rate=1000)
        # eight relays between the source and the counter: a deployment of eleven levels, each
        # acked before the next, long enough to kill the leader in the middle of it
        relays = [f"relay-{i}" for i in range(1, 9)]
        spec["tasks"] += [
            {"id": r, "operator": "core.passthrough", "placement": {"tier": "fog"}} for r in relays
        ]
        chain = ["gen", *relays, "count", "sink"]
        spec["edges"] = [{"from": a, "to": b} for a, b in itertools.pairwise(chain)]
        df_id = standby.submit(spec)  # any replica takes a dataflow
        wait_until(  # the leader placed it and began deploying (tasks are deployed sinks first)
            lambda: any(t["state"] != "pending" for t in standby.dataflow(df_id)["tasks"]),
            timeout=30,
            interval=0.01,
            what="the deployment under way",
        )
        platform.services["master"].kill()  # the leader, in the middle of the deployment
        killed_at = time.time()
        at_kill = {t["id"]: t["state"] for t in standby.dataflow(df_id)["tasks"]}
        assert any(s != "running" for s in at_kill.values()), f"deployed before the kill: {at_kill}"
        took_over(logs, "master", killed_at)
        assert standby.http.get("/healthz").json()["leader"] is True
        standby.wait_state(df_id, "completed", timeout=90)
        check_exactly_once(out, total)

        df = standby.dataflow(df_id)
        assert all(t["generation"] == 1 for t in df["tasks"]), [
            (t["id"], t["generation"]) for t in df["tasks"]
        ]
        events = standby.http.get(f"/api/v1/dataflows/{df_id}/events", params={"limit": 1000}).json()
        started = [e.get("task") for e in events if e["kind"] in ("task_started", "task_restarted")]
        # announced at most once each (the new leader counts what was recorded as seen); one
        # the dead leader recorded but had not announced yet stays unannounced (a limit)
        assert len(started) == len(set(started)), started
        bad = [e for e in events if e["kind"] in ("task_restarted", "task_failed")]
        assert not bad, bad
        assert platform.services["master-2"].alive()
    finally:
        standby.close()


def test_a_migration_completes_when_the_leading_master_dies_in_the_middle(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """Two masters; the leader (which moves tasks for the migrator's saga) is killed (-9) right
    after a migration starts: the saga's step goes to the new leader, the migration completes
    and the counter's state and output are exactly once."""
    platform, api = platform_factory(FLEET, env={"ECHO_LEADER_TTL": str(TTL)})
    logs = leader_and_standby(platform, "master")
    standby = Api(platform.replica_api_url(2), platform.admin_token, platform.api_verify)
    try:
        out, total = tmp_path / "counts.jsonl", 20_000
        df_id = api.submit(counting(out, total, rate=1000))
        api.wait_state(df_id, "running", timeout=30)
        wait_until(lambda: task(api, df_id, "count")["records_in"] >= 2_000, timeout=30, what="counting")
        source = task(api, df_id, "count")["device"]
        target = next(f for f in FOGS if f != source)
        mid = migrate(standby, df_id, "count", target)
        platform.services["master"].kill()
        killed_at = time.time()
        took_over(logs, "master", killed_at)
        m = wait_migration(standby, mid, timeout=60)
        assert m["state"] == "completed", m
        assert task(standby, df_id, "count")["device"] == target
        standby.wait_state(df_id, "completed", timeout=90)
        check_exactly_once(out, total)
    finally:
        standby.close()
