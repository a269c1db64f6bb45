"""One deployment is one trace across master, scheduler, registry and the agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
