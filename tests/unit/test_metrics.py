"""Metrics: the exported names and labels (a contract), how figures are derived from the
records, the API's route labels, and the endpoint's refusal of an unsafe configuration."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from echo_cli.devstack.monitoring import scrape_config
from echo_master.metrics import ApiMetrics, MasterMetrics, input_lag, task_families
from echo_master.store import Dataflow
from echo_migrator.metrics import MigratorMetrics, downtime
from echo_registry.metrics import device_families
from echo_shared import metrics as m
from echo_shared.bundle import create_bundle
from echo_shared.messages import Migration, MigrationStep
from echo_shared.models import (
    Capacity,
    ChannelCounts,
    DataflowSpec,
    DeviceRecord,
    DeviceStatus,
    TaskRecord,
    TaskState,
)
from tests.harness.waiting import wait_until

# the names issue 9 lists: dashboards are written against them
CONTRACT = {
    "echo_task_records_in_total",
    "echo_task_records_out_total",
    "echo_task_errors_total",
    "echo_task_input_lag_records",
    "echo_task_restarts_total",
    "echo_task_state",
    "echo_device_up",
    "echo_device_cpu_ratio",
    "echo_device_memory_ratio",
    "echo_device_rtt_seconds",
    "echo_channel_messages_total",
    "echo_channel_bytes_total",
    "echo_channel_retransmits_total",
    "echo_deploy_duration_seconds",
    "echo_migration_downtime_seconds",
    "echo_migrations_total",
    "echo_failovers_total",
    "echo_reconcile_lag_seconds",
    "echo_api_requests_total",
}


def samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def device(id: str, tier: str, status: DeviceStatus, **kw: Any) -> DeviceRecord:
    return DeviceRecord(id=id, tier=tier, capacity=Capacity(), status=status, **kw)  # type: ignore[arg-type]


def dataflow(tasks: dict[str, TaskRecord], state: str = "running") -> Dataflow:
    spec = DataflowSpec.model_validate(
        {
            "name": "d",
            "tasks": [
                {"id": "a", "operator": "io.generate"},
                {"id": "b", "operator": "core.passthrough"},
                {"id": "c", "operator": "io.file_sink", "config": {"path": "/tmp/x"}},
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "a", "to": "c"}],
        }
    )
    raw = {"id": "df-1", "spec": spec.model_dump_json(by_alias=True), "state": state}
    return Dataflow(raw, tasks)


def test_every_contract_name_is_exported_by_a_service() -> None:
    loop = asyncio.new_event_loop()
    try:
        exported: set[str] = set()
        master = MasterMetrics(None, loop)  # type: ignore[arg-type]
        master.deployed(0.1)
        master.waited(0.01)
        master.api_requests.labels("/x", "200").inc()
        migrator = MigratorMetrics()
        migrator.failed_over()
        migrator.migrations.labels("completed").inc()
        migrator.downtime.observe(0.2)
        for registry in (master.registry, migrator.registry):
            exported |= {
                line.split("{")[0].split(" ")[0] for line in generate_latest(registry).decode().splitlines()
            }
        d = dataflow(
            {
                "a": TaskRecord(
                    id="a",
                    operator="io.generate",
                    device="e",
                    channels={"b": ChannelCounts(transport="mqtt")},
                )
            }
        )
        registry = CollectorRegistry()
        for f in [
            *task_families([d], {}),
            *device_families(
                [
                    device(
                        "e",
                        "edge",
                        DeviceStatus.online,
                        cpu_percent=1.0,
                        memory_percent=1.0,
                        rtt_ms={"mqtt": 1.0},
                    )
                ]
            ),
        ]:
            exported |= {s.name for s in f.samples}
        del registry
    finally:
        loop.close()
    missing = {n for n in CONTRACT if n not in exported and f"{n}_count" not in exported}
    assert not missing


def test_devices_up_by_tier_and_their_last_reported_load() -> None:
    got = samples(
        device_families(
            [
                device(
                    "e1",
                    "edge",
                    DeviceStatus.online,
                    cpu_percent=50.0,
                    memory_percent=25.0,
                    rtt_ms={"mqtt": 12.0},
                ),
                device("f1", "fog", DeviceStatus.lost, rtt_ms={"nats": 3.0}),
            ]
        )
    )
    assert got[("echo_device_up", (("device", "e1"), ("tier", "edge")))] == 1.0
    assert got[("echo_device_up", (("device", "f1"), ("tier", "fog")))] == 0.0
    assert got[("echo_device_status", (("device", "f1"), ("status", "lost"), ("tier", "fog")))] == 1.0
    assert got[("echo_device_status", (("device", "f1"), ("status", "online"), ("tier", "fog")))] == 0.0
    assert got[("echo_device_cpu_ratio", (("device", "e1"),))] == 0.5
    assert got[("echo_device_memory_ratio", (("device", "e1"),))] == 0.25
    assert got[("echo_device_rtt_seconds", (("device", "e1"),))] == pytest.approx(0.012)
    assert got[("echo_device_rtt_seconds", (("device", "f1"),))] == pytest.approx(0.003)  # no MQTT figure
    assert ("echo_device_cpu_ratio", (("device", "f1"),)) not in got  # never reported: no sample


def test_task_figures_lag_state_restarts_and_channels() -> None:
    d = dataflow(
        {
            "a": TaskRecord(
                id="a",
                operator="io.generate",
                device="e1",
                state=TaskState.running,
                generation=1,
                records_out=100,
                out_seq=100,
                channels={
                    "b": ChannelCounts(transport="mqtt", messages=100, bytes=25_600, retransmits=3),
                    "c": ChannelCounts(transport="nats", messages=100, bytes=25_600),
                },
            ),
            "b": TaskRecord(
                id="b",
                operator="core.passthrough",
                device="f1",
                state=TaskState.running,
                generation=3,
                records_in=90,
                records_out=90,
                out_seq=90,
                hwm={"a": 90},
            ),
            "c": TaskRecord(
                id="c", operator="io.file_sink", device="c1", state=TaskState.failed, hwm={"a": 40, "b": 80}
            ),
        }
    )
    assert input_lag(d, "a") == 0
    assert input_lag(d, "b") == 10
    assert input_lag(d, "c") == 60 + 10
    got = samples(task_families([d], {("df-1", "c", "c1"): 2}))
    key = (("dataflow", "df-1"), ("device", "f1"), ("task", "b"))
    assert got[("echo_task_records_in_total", key)] == 90
    assert got[("echo_task_input_lag_records", key)] == 10
    assert got[("echo_task_restarts_total", key)] == 2
    assert got[("echo_task_state", tuple(sorted((*key, ("state", "running")))))] == 1
    assert ("echo_task_state", tuple(sorted((*key, ("state", "failed"))))) not in got  # one series a task
    assert got[("echo_task_errors_total", (("dataflow", "df-1"), ("device", "c1"), ("task", "c")))] == 2
    edge = (("dataflow", "df-1"), ("edge", "a->b"), ("transport", "mqtt"))
    assert got[("echo_channel_messages_total", edge)] == 100
    assert got[("echo_channel_bytes_total", edge)] == 25_600
    assert got[("echo_channel_retransmits_total", edge)] == 3
    assert (
        got[("echo_channel_messages_total", (("dataflow", "df-1"), ("edge", "a->c"), ("transport", "nats")))]
        == 100
    )
    assert got[("echo_dataflows", (("state", "running"),))] == 1
    assert got[("echo_dataflows", (("state", "failed"),))] == 0
    # no label carries a record id, a seq or a path: only the bounded ones
    labels = {k for (_, ls) in got for k, _ in ls}
    assert labels <= {"dataflow", "task", "device", "state", "edge", "transport"}


def test_migration_downtime_is_move_start_to_resumed() -> None:
    def mig(*steps: MigrationStep, state: str = "completed") -> Migration:
        return Migration(id="m", dataflow="d", task="t", state=state, steps=list(steps))  # type: ignore[arg-type]

    drained = mig(
        MigrationStep(name="place", state="done", started_at=9.0, ended_at=9.5),
        MigrationStep(name="drain", state="done", started_at=10.0, ended_at=10.2),
        MigrationStep(name="resume", state="done", started_at=10.2, ended_at=10.45),
    )
    assert downtime(drained) == pytest.approx(0.45)
    failover = mig(
        MigrationStep(name="restore", state="done", started_at=20.0, ended_at=20.1),
        MigrationStep(name="resume", state="done", started_at=20.1, ended_at=21.0),
    )
    assert downtime(failover) == pytest.approx(1.0)
    assert downtime(mig(MigrationStep(name="drain", state="done", started_at=1.0))) is None
    figures = MigratorMetrics()
    figures.ended(drained)
    figures.ended(mig(state="rolled_back"))
    text = generate_latest(figures.registry).decode()
    assert 'echo_migrations_total{result="completed"} 1.0' in text
    assert 'echo_migrations_total{result="rolled_back"} 1.0' in text
    assert "echo_migration_downtime_seconds_count 1.0" in text


def test_api_requests_are_labelled_by_route_template_not_path() -> None:
    loop = asyncio.new_event_loop()
    try:
        figures = MasterMetrics(None, loop)  # type: ignore[arg-type]
        app = FastAPI()

        @app.get("/api/v1/dataflows/{df_id}")
        async def one(df_id: str) -> dict[str, str]:
            return {"id": df_id}

        app.add_middleware(ApiMetrics, metrics=figures, routes=app.router.routes)
        with TestClient(app) as c:
            assert c.get("/api/v1/dataflows/df-123").status_code == 200
            assert c.get("/api/v1/dataflows/df-456").status_code == 200
            assert c.get("/no/such/path/df-789").status_code == 404
        text = generate_latest(figures.registry).decode()
    finally:
        loop.close()
    assert 'echo_api_requests_total{code="200",route="/api/v1/dataflows/{df_id}"} 2.0' in text
    assert 'echo_api_requests_total{code="404",route="unmatched"} 1.0' in text
    assert "df-123" not in text and "df-789" not in text


def test_async_collector_exports_nothing_when_its_figures_cannot_be_read() -> None:
    registry = CollectorRegistry()
    errors = m.scrape_errors(registry)
    loop = asyncio.new_event_loop()

    async def broken() -> list[Metric]:
        raise ConnectionError("redis down")

    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        wait_until(loop.is_running, timeout=5, what="the loop")
        registry.register(m.AsyncCollector("devices", loop, broken, errors, timeout=2))
        first = generate_latest(registry).decode()
        text = generate_latest(registry).decode()  # the counter comes before the collector it counts
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(2)
        loop.close()
    assert "echo_device_up" not in first
    assert 'echo_scrape_errors_total{collector="devices"} 1.0' in text  # the first scrape's failure


def test_the_endpoint_refuses_to_serve_without_mutual_tls(tmp_path: Path) -> None:
    b = create_bundle(tmp_path / "pki")
    registry = CollectorRegistry()

    def server(**kw: Any) -> m.MetricsServer:
        args: dict[str, Any] = {
            "port": 1,
            "host": "127.0.0.1",
            "cert_file": b.server.cert,
            "key_file": b.server.key,
            "ca_file": b.ca_file,
            "service": "t",
        }
        args.update(kw)
        return m.MetricsServer(registry, **args)

    with pytest.raises(m.MetricsError, match="ECHO_METRICS_CERT_FILE"):
        server(cert_file=None).check()
    with pytest.raises(m.MetricsError, match="ECHO_CA_FILE"):
        server(ca_file=None).check()
    with pytest.raises(m.MetricsError, match="not a readable file"):
        server(key_file=tmp_path / "missing.key").check()
    leaky = tmp_path / "leaky.key"
    leaky.write_bytes(b.server.key.read_bytes())
    os.chmod(leaky, 0o644)
    with pytest.raises(Exception, match=r"leaky\.key"):
        server(key_file=leaky).check()
    server().check()
    m.MetricsServer(
        registry, port=0, host="x", cert_file=None, key_file=None, ca_file=None, service="t"
    ).start()


def test_bundle_gives_prometheus_a_client_certificate_and_a_hashed_login(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    b = create_bundle(tmp_path / "pki")
    cert = x509.load_pem_x509_certificate(b.scraper.cert.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a client, never a server
    for secret in (b.scraper.key, b.prometheus_key, b.prometheus_password_file, b.prometheus_web_config):
        assert secret.stat().st_mode & 0o077 == 0, secret
    password = b.prometheus_password_file.read_text().strip()
    assert password and password not in b.prometheus_web_config.read_text()  # only its bcrypt hash
    cfg = scrape_config(b, {"master": "127.0.0.1:9"}, 0.5)
    assert cfg["global"]["scrape_interval"] == "500ms"
    job = cfg["scrape_configs"][0]
    assert job["scheme"] == "https" and job["tls_config"]["cert_file"] == str(b.scraper.cert)


def test_messages_in_parts_dropped_are_counted_by_reason() -> None:
    from collections import Counter

    from echo_shared import metrics as m

    dropped: Counter[str] = Counter()
    registry = CollectorRegistry()
    registry.register(m.CountsCollector(m.MQTT_PARTS_DROPPED, "dropped", "reason", lambda: dropped))
    assert "echo_mqtt_parts_dropped_total{" not in generate_latest(registry).decode()
    dropped["bad part"] += 2
    dropped["too large"] += 1
    text = generate_latest(registry).decode()
    assert 'echo_mqtt_parts_dropped_total{reason="bad part"} 2.0' in text
    assert 'echo_mqtt_parts_dropped_total{reason="too large"} 1.0' in text
