"""Events and trace ids on a real stack: what happened to a dataflow and its devices, with
the placement reason, the migration's figures and the trace each belongs to; read over
REST and through the real ``echoctl`` (``get events [-w]``, ``describe dataflow``)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from echo_cli.devstack.platform import AgentSpec, Platform
from tests.conftest import PlatformFactory
from tests.harness.api import Api
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

ECHOCTL = Path(sys.executable).parent / "echoctl"
FLEET = (
    AgentSpec("edge-1", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
)
TRACE = re.compile(r"^[0-9a-f]{32}$")


def spec(out: Path) -> dict[str, Any]:
    return {
        "name": "eventful",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": 10**9, "rate": 50},
                "placement": {"device": "edge-1"},
            },
            {"id": "pass", "operator": "core.passthrough", "placement": {"device": "fog-1"}},
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "pass"}, {"from": "pass", "to": "sink"}],
    }


def events(api: Api, path: str = "/api/v1/events", **params: Any) -> list[dict[str, Any]]:
    r = api.http.get(path, params=params)
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()
    return body


def kinds(evs: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in evs]


def echoctl(p: Platform, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ECHOCTL), *args], env=cli_env(p, **env_extra), capture_output=True, text=True, timeout=60
    )


def cli_env(p: Platform, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env.update(ECHO_API_URL=p.api_url, ECHO_TOKEN=p.admin_token, **extra)
    if p.brokers.bundle is not None:
        env["ECHO_CA_FILE"] = str(p.brokers.bundle.ca_file)
    return env


def test_a_dataflows_life_is_told_in_events_with_its_trace(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    p, api = platform_factory(FLEET)
    t0 = time.time()
    df_id = api.submit(spec(tmp_path / "out.jsonl"))
    api.wait_state(df_id, "running", timeout=30)
    df = api.dataflow(df_id)
    assert TRACE.match(df["trace_id"]), df.get("trace_id")
    mine = f"/api/v1/dataflows/{df_id}/events"

    def started() -> list[dict[str, Any]] | None:
        evs = events(api, mine)
        return evs if kinds(evs).count("task_started") >= 3 and "deployed" in kinds(evs) else None

    evs = wait_until(started, timeout=20, what="scheduled, deployed and three tasks started")
    by_kind = {e["kind"]: e for e in evs}
    assert kinds(evs).index("scheduled") < kinds(evs).index("deployed")
    scheduled = by_kind["scheduled"]
    assert "gen on edge-1" in scheduled["message"] and "sink on cloud-1" in scheduled["message"]
    assert scheduled["data"]["placement"]["pass"]["device"] == "fog-1"
    assert scheduled["data"]["placement"]["pass"]["reason"]  # why it runs there
    for e in evs:
        assert e["dataflow"] == df_id and e["time"] >= t0 - 1 and e["message"] and e["subject"]
    # the deployment's events belong to the deployment's trace
    assert scheduled["trace_id"] == df["trace_id"]
    assert by_kind["deployed"]["trace_id"] == df["trace_id"]
    starts = {e["task"]: e["device"] for e in evs if e["kind"] == "task_started"}
    assert starts == {"gen": "edge-1", "pass": "fog-1", "sink": "cloud-1"}
    assert kinds(evs).count("task_started") == 3, "a state is told once, not at every report"

    # a move: from, to, downtime; the migration has a trace of its own
    r = api.http.post(f"/api/v1/dataflows/{df_id}/tasks/pass/migrate", json={"device": "fog-2"})
    assert r.status_code == 202, r.text
    mid = r.json()["migration"]
    done = wait_until(
        lambda: (m := api.http.get(f"/api/v1/migrations/{mid}").json())["state"] == "completed" and m,
        timeout=60,
        what="the migration",
    )
    assert TRACE.match(done["trace_id"])
    migrated = wait_until(
        lambda: next((e for e in events(api, mine) if e["kind"] == "migrated"), None),
        timeout=20,
        what="migrated",
    )
    assert migrated["data"]["from"] == "fog-1" and migrated["data"]["to"] == "fog-2"
    assert migrated["data"]["downtime_s"] > 0 and migrated["trace_id"] == done["trace_id"]
    assert "fog-1 to fog-2" in migrated["message"]
    wait_until(
        lambda: any(e["kind"] == "task_restarted" and e["device"] == "fog-2" for e in events(api, mine)),
        timeout=20,
        what="the moved task running again",
    )

    # a device goes: unreachable, lost, its task fails over; the device filter
    p.agents["fog-2"].kill()
    lost = wait_until(
        lambda: (evs := events(api, device="fog-2")) and "failed_over" in kinds(evs) and evs,
        timeout=40,
        what="fog-2 unreachable, lost, and its task failing over",
    )
    assert {"device_unreachable", "device_lost", "failed_over"} <= set(kinds(lost))
    assert all(e["device"] == "fog-2" for e in lost)
    assert kinds(lost).index("device_unreachable") < kinds(lost).index("device_lost")

    # filters and bad input
    assert events(api, since=str(time.time() + 3600)) == []
    recent = events(api, since="10m", limit=5)
    assert len(recent) == 5 and recent == sorted(recent, key=lambda e: e["id"])
    newest = events(api, limit=1)[0]

    def position(e: dict[str, Any]) -> tuple[int, int]:
        ms, seq = e["id"].split("-")
        return int(ms), int(seq)

    assert all(position(e) > position(newest) for e in events(api, after=newest["id"]))  # only newer
    for bad in ({"since": "yesterday-ish"}, {"after": "nope"}, {"limit": 0}):
        r = api.http.get("/api/v1/events", params=bad)
        assert r.status_code == 422, (bad, r.text)
        assert next(iter(bad)) in r.text
    assert api.http.get("/api/v1/dataflows/df-000000000000/events").status_code == 404


def test_echoctl_describes_a_dataflow_and_follows_events(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    p, api = platform_factory(FLEET[:1] + FLEET[3:])
    s = spec(tmp_path / "out.jsonl")
    s["tasks"][1]["placement"] = {"device": "cloud-1"}
    df_id = api.submit(s)
    api.wait_state(df_id, "running", timeout=30)
    trace_id = api.dataflow(df_id)["trace_id"]
    wait_until(
        lambda: "deployed" in kinds(events(api, f"/api/v1/dataflows/{df_id}/events")),
        timeout=20,
        what="deployed",
    )

    got = echoctl(p, "describe", "dataflow", df_id, ECHO_GRAFANA_URL="https://grafana.example:3000")
    assert got.returncode == 0, got.stderr
    for want in ("Placement and tasks", "Events", "deployed", "scheduled", trace_id, "edge-1", "cloud-1"):
        assert want in got.stdout, (want, got.stdout)
    assert "https://grafana.example:3000/explore" in got.stdout and "echo-tempo" in got.stdout

    shown = echoctl(p, "get", "dataflow", df_id)
    assert shown.returncode == 0 and trace_id in shown.stdout
    assert "/explore" not in shown.stdout  # no Grafana URL: no link

    listed = echoctl(p, "get", "events", "--dataflow", df_id, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert "deployed" in kinds(json.loads(listed.stdout))
    bad = echoctl(p, "describe", "dataflow", "df-000000000000")
    assert bad.returncode == 1 and "df-000000000000" in bad.stderr and "Traceback" not in bad.stderr

    # -w: what happened so far, then what happens next
    follow = subprocess.Popen(
        [str(ECHOCTL), "get", "events", "-w", "--dataflow", df_id, "-o", "json"],
        env=cli_env(p),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=30))
        assert first["dataflow"] == df_id
        assert api.http.delete(f"/api/v1/dataflows/{df_id}").status_code in (200, 202)
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while "stopped" not in seen and time.monotonic() < deadline:
            try:
                seen.append(json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))["kind"])
            except queue.Empty:
                break
        assert "stopped" in seen, seen
    finally:
        follow.terminate()
        follow.wait(10)
