"""Metrics on a real stack, read back from a real Prometheus (Debian's ``prometheus``).

Every service serves ``/metrics`` over HTTPS to clients with a certificate of ECHO's CA
only; Prometheus scrapes them with its own, and answers queries only to its login. A
stateful dataflow runs across three devices and one of its tasks moves: the figures the
issue names (devices, tasks, channels, deployments, migrations, API) come back through
PromQL with their labels.
"""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from echo_cli.devstack.monitoring import Prometheus
from echo_cli.devstack.platform import AgentSpec, Platform
from echo_shared.credentials import client_tls
from tests.conftest import PlatformFactory
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

FLEET = (
    AgentSpec("edge-1", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
)
SCRAPE = 0.5  # seconds between scrapes in this test
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def spec(out: Path) -> dict[str, Any]:
    return {
        "name": "metered",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": 10**9, "rate": 200, "fields": {"city": "nyc"}},
                "placement": {"device": "edge-1"},
            },
            {
                "id": "count",
                "operator": "stats.count_by_key",
                "config": {"key": "city"},
                "placement": {"device": "fog-1"},
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


def value(prom: Prometheus, expr: str) -> float | None:
    """The single value of an instant query (None: no series yet)."""
    res = prom.query(expr)
    return float(res[0]["value"][1]) if len(res) == 1 else None


def scraper_context(p: Platform) -> ssl.SSLContext:
    return p.scraper_tls()


def test_metrics_endpoints_refuse_anyone_without_a_client_certificate(
    platform_factory: PlatformFactory,
) -> None:
    p, _ = platform_factory(FLEET[:1])
    assert set(p.metrics_targets) == {"master", "registry", "scheduler", "migrator"}
    for service, addr in p.metrics_targets.items():
        with pytest.raises(httpx.HTTPError):  # TLS without a client certificate: the handshake fails
            httpx.get(f"https://{addr}/metrics", verify=client_tls(p.brokers.bundle.ca_file), timeout=5)  # type: ignore[union-attr]
        with pytest.raises(httpx.HTTPError):  # plain HTTP: nothing answers it
            httpx.get(f"http://{addr}/metrics", timeout=5)
        r = httpx.get(f"https://{addr}/metrics", verify=scraper_context(p), timeout=5)
        assert r.status_code == 200, service
        assert "process_cpu_seconds_total" in r.text
    registry = httpx.get(
        f"https://{p.metrics_targets['registry']}/metrics", verify=scraper_context(p), timeout=5
    )
    assert 'echo_device_up{device="edge-1",tier="edge"} 1.0' in registry.text


def test_prometheus_scrapes_the_stack_and_answers_only_its_login(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    p, api = platform_factory(FLEET)
    prom = p.start_prometheus(interval=SCRAPE)
    b = p.brokers.bundle
    assert b is not None

    # Prometheus itself: HTTPS and a login
    anonymous = httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}, verify=client_tls(b.ca_file))
    assert anonymous.status_code == 401
    wrong = httpx.get(
        f"{prom.url}/api/v1/query",
        params={"query": "up"},
        auth=("echo", "guess"),
        verify=client_tls(b.ca_file),
    )
    assert wrong.status_code == 401

    # every service scraped
    def all_up() -> bool:
        try:
            res = prom.query("up")
        except httpx.HTTPError as e:  # a query may meet a transient error: polled again
            raise AssertionError(f"query failed: {e}") from e
        return len(res) == 4 and all(r["value"][1] == "1" for r in res)

    wait_until(all_up, timeout=30, what="every service scraped")

    # the fleet, by tier
    def fleet() -> dict[str, tuple[str, str]] | None:
        got = {
            r["metric"]["device"]: (r["metric"]["tier"], r["value"][1]) for r in prom.query("echo_device_up")
        }
        return got if len(got) == len(FLEET) else None

    got = wait_until(fleet, timeout=30, what="echo_device_up for the fleet")
    assert got == {s.device_id: (s.tier, "1") for s in FLEET}
    wait_until(
        lambda: value(prom, 'echo_device_cpu_ratio{device="fog-1"}') is not None, timeout=30, what="cpu"
    )

    df_id = api.submit(spec(tmp_path / "out.jsonl"))
    api.wait_state(df_id, "running", timeout=30)
    sel = f'dataflow="{df_id}"'

    # tasks: records, state, lag; the edges' channels
    wait_until(
        lambda: (value(prom, f'echo_task_records_out_total{{{sel},task="gen",device="edge-1"}}') or 0) > 0,
        timeout=30,
        what="gen's records out",
    )
    wait_until(
        lambda: (value(prom, f'echo_task_records_in_total{{{sel},task="sink",device="cloud-1"}}') or 0) > 0,
        timeout=30,
        what="the sink's records in",
    )
    assert value(prom, f'echo_task_state{{{sel},task="count",device="fog-1",state="running"}}') == 1
    assert value(prom, f'echo_task_state{{{sel},task="count",device="fog-1",state="failed"}}') is None
    assert value(prom, f'echo_task_input_lag_records{{{sel},task="count"}}') is not None
    wait_until(
        lambda: (
            (value(prom, f'echo_channel_messages_total{{{sel},edge="gen->count",transport="mqtt"}}') or 0) > 0
        ),
        timeout=30,
        what="messages on gen->count (an edge device: MQTT)",
    )
    wait_until(
        lambda: (value(prom, f'echo_channel_bytes_total{{{sel},edge="count->sink"}}') or 0) > 0,
        timeout=30,
        what="bytes on count->sink",
    )
    assert value(prom, f'echo_channel_retransmits_total{{{sel},edge="gen->count"}}') is not None

    # a move: the migration's result and downtime, the moved task's restart
    r = api.http.post(f"/api/v1/dataflows/{df_id}/tasks/count/migrate", json={"device": "fog-2"})
    assert r.status_code == 202, r.text
    mid = r.json()["migration"]
    wait_until(
        lambda: api.http.get(f"/api/v1/migrations/{mid}").json()["state"] == "completed",
        timeout=60,
        what="the migration",
    )
    wait_until(
        lambda: (value(prom, 'echo_migrations_total{result="completed"}') or 0) >= 1,
        timeout=30,
        what="echo_migrations_total",
    )
    assert (value(prom, "echo_migration_downtime_seconds_count") or 0) >= 1
    wait_until(
        lambda: value(prom, f'echo_task_restarts_total{{{sel},task="count",device="fog-2"}}') == 1,
        timeout=30,
        what="the moved task counted as restarted once, on fog-2",
    )

    # the control plane: deployments, API, reconciliation, placements
    assert (value(prom, "echo_deploy_duration_seconds_count") or 0) >= 1
    assert (value(prom, 'echo_api_requests_total{route="/api/v1/dataflows",code="201"}') or 0) >= 1
    assert value(prom, "echo_reconcile_lag_seconds") is not None
    assert (value(prom, 'echo_placements_total{result="placed"}') or 0) >= 1
    assert value(prom, "echo_failovers_total") == 0

    # refused requests are counted under their route, not their path
    assert api.http.get("/api/v1/dataflows", headers={"Authorization": "Bearer nope"}).status_code == 401
    wait_until(
        lambda: (value(prom, 'echo_api_requests_total{route="/api/v1/dataflows",code="401"}') or 0) >= 1,
        timeout=30,
        what="the 401 under its route",
    )
    assert not [r for r in prom.query("echo_api_requests_total") if "df-" in r["metric"]["route"]]

    # every metric a Grafana dashboard queries is one the platform really exports
    exported: set[str] = set()
    for addr in p.metrics_targets.values():
        text = httpx.get(f"https://{addr}/metrics", verify=scraper_context(p), timeout=5).text
        exported |= {
            line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
        }
    queried: dict[str, set[str]] = {}
    for board in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                for name in re.findall(r"\b(echo_[a-z_]+)", target["expr"]):
                    queried.setdefault(name, set()).add(f"{board.name}: {panel['title']}")
    assert len(queried) >= 15
    unknown = {name: where for name, where in queried.items() if name not in exported}
    assert not unknown, f"dashboards query metrics nobody exports: {unknown}"
