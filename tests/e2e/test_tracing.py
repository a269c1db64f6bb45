"""One deployment is one trace across master, scheduler, registry and the agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import PlatformFactory
from tests.harness.otlp import OtlpReceiver
from tests.harness.specs import three_tiers
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def test_deployment_is_one_trace(
    platform_factory: PlatformFactory, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    _platform, api = platform_factory(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    df_id = api.submit(three_tiers("traced", tmp_path / "o.jsonl", count=10))
    api.wait_state(df_id, "completed", "running")

    def root_trace() -> str | None:
        for s in otlp.snapshot():
            if s.name == "submit dataflow" and s.attributes.get("echo.dataflow") == df_id:
                return s.trace_id
        return None

    trace_id = wait_until(root_trace, timeout=20, what="the submission's root span")
    wanted_services = {"echo-master", "echo-scheduler", "echo-registry", "echo-agent"}
    wanted_devices = {"edge-1", "fog-1", "cloud-1"}

    def complete() -> list[object] | None:
        spans = [s for s in otlp.snapshot() if s.trace_id == trace_id]
        services = {s.service for s in spans}
        devices = {s.resource.get("echo.device") for s in spans if s.service == "echo-agent"}
        ids = {s.span_id for s in spans}
        orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
        # spans arrive in batches from each process: wait until every parent is in as well
        if wanted_services <= services and wanted_devices <= devices and not orphans:
            return list(spans)
        return None

    spans = wait_until(complete, timeout=20, what="spans of every service in one trace")
    names = {s.name for s in spans}  # type: ignore[attr-defined]
    assert "submit dataflow" in names
    assert any(n.endswith("scheduler.place handle") for n in names)
    assert any(n.endswith("registry.devices.list handle") for n in names)
    assert {f"agent deploy {t}" for t in ("gen", "pass", "sink")} <= names
    # one root (the HTTP request); every other span's parent is inside the trace
    roots = [s for s in spans if not s.parent_id]  # type: ignore[attr-defined]
    assert len(roots) == 1, roots
    # ECHO_TRACE_RECORDS is 0 by default: no record is traced
    assert not [s for s in otlp.snapshot() if s.name.startswith("record ")]


def test_sampled_records_are_traced_across_devices(
    platform_factory: PlatformFactory, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """``ECHO_TRACE_RECORDS``: a sampled record's path edge-1 -> fog-1 (MQTT) -> cloud-1
    (NATS) is one trace with a span per hop, each the child of the one before."""
    _platform, api = platform_factory(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "ECHO_TRACE_RECORDS": "0.05",
        }
    )
    count = 400
    df_id = api.submit(three_tiers("records", tmp_path / "o.jsonl", count=count, rate=400))
    df = api.wait_state(df_id, "completed", timeout=60)
    edges = {(e["from"], e["to"]): e["transport"] for e in df["edges"]}
    assert edges == {("gen", "pass"): "mqtt", ("pass", "sink"): "nats"}

    def paths() -> list[list[Any]] | None:
        spans = [s for s in otlp.snapshot() if s.name.startswith("record ")]
        by_id = {s.span_id: s for s in spans}
        full = []
        for sink in (s for s in spans if s.name == "record at sink"):
            chain = [sink]
            while chain[-1].parent_id in by_id:
                chain.append(by_id[chain[-1].parent_id])
            if chain[-1].name == "record from gen" and len(chain) == 3:
                full.append(chain[::-1])
        return full if len(full) >= 3 else None

    found = wait_until(paths, timeout=30, what="three records traced from the source to the sink")
    for gen, hop, sink in found:
        assert gen.trace_id == hop.trace_id == sink.trace_id
        assert not gen.parent_id, "a sampled record's trace starts at its source"
        assert [s.name for s in (gen, hop, sink)] == ["record from gen", "record at pass", "record at sink"]
        assert [s.resource.get("echo.device") for s in (gen, hop, sink)] == ["edge-1", "fog-1", "cloud-1"]
        assert gen.attributes["echo.dataflow"] == df_id and int(gen.attributes["echo.seq"]) >= 1
        assert hop.attributes["echo.producer"] == "gen" and sink.attributes["echo.producer"] == "pass"
    sampled = {s.trace_id for s in otlp.snapshot() if s.name == "record from gen"}
    assert 3 <= len(sampled) < count / 2, f"{len(sampled)} of {count} records sampled at 5 %"


def test_a_migration_and_a_failover_are_traces_of_their_own(
    platform_factory: PlatformFactory, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """A move: one trace, a span per saga step, the master's move and the agents' drain and
    deploy inside it. A failover: one trace for the lost device, its tasks' moves in it."""
    fleet = (
        AgentSpec("edge-1", "edge", input_streams=("taxi-feed",), cpu=1.0, memory_mb=512),
        AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
        AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
        AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=8192),
    )
    p, api = platform_factory(
        fleet, env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    df_id = api.submit(three_tiers("moved", tmp_path / "o.jsonl", count=10**9, rate=50))
    api.wait_state(df_id, "running")
    r = api.http.post(f"/api/v1/dataflows/{df_id}/tasks/pass/migrate", json={"device": "fog-2"})
    assert r.status_code == 202, r.text
    mid = r.json()["migration"]
    mig = wait_until(
        lambda: (m := api.http.get(f"/api/v1/migrations/{mid}").json())["state"] == "completed" and m,
        timeout=60,
        what="the migration",
    )

    def moved() -> list[Any] | None:
        spans = [s for s in otlp.snapshot() if s.trace_id == mig["trace_id"]]
        names = {s.name for s in spans}
        devices = {s.resource.get("echo.device") for s in spans if s.service == "echo-agent"}
        steps = {"migration step place", "migration step drain", "migration step resume"}
        assert steps <= names and {"fog-1", "fog-2"} <= devices, (sorted(names), devices)
        return spans

    spans = wait_until(moved, timeout=30, what="the saga's steps and both agents in the migration's trace")
    by_id = {s.span_id: s for s in spans}
    drain = next(s for s in spans if s.name == "migration step drain")

    def under(span: Any, ancestor: Any) -> bool:
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            if span.span_id == ancestor.span_id:
                return True
        return False

    on_fog1 = [s for s in spans if s.service == "echo-agent" and s.resource.get("echo.device") == "fog-1"]
    assert on_fog1 and all(under(s, drain) for s in on_fog1), "the source's drain runs inside the drain step"

    # the device goes: one trace for its failover
    p.agents["fog-2"].kill()

    def failover() -> list[Any] | None:
        roots = [s for s in otlp.snapshot() if s.name == "failover fog-2"]
        if not roots:
            return None
        inside = [s for s in otlp.snapshot() if s.trace_id == roots[0].trace_id]
        names = {s.name for s in inside}
        return inside if "migration step restore" in names and "migration step resume" in names else None

    inside = wait_until(failover, timeout=60, what="the failover's trace with its move")
    assert any(s.name.startswith("migrate pass") for s in inside)
