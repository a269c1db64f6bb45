"""Prometheus metrics: the names every service exports, and the ``/metrics`` endpoint.

Metric names and labels are a contract (dashboards and alerts are written against them):
they are defined here, once. Labels are bounded (dataflow, task, device, tier, edge,
transport, state, result, route, code): never a record id.

Each cloud service serves its metrics on ``ECHO_METRICS_PORT`` (0: none) over HTTPS with
mutual TLS: the client (Prometheus) must present a certificate of ECHO's CA with the
``clientAuth`` usage (``echoctl pki init`` issues one, ``prometheus/client.pem``). Plain
HTTP and anonymous scrapes are refused: the figures name devices and dataflows.

Edge devices sit behind NAT and are never scraped: their figures travel with heartbeats and
task reports, are kept by the registry and the master, and exported by them.

Figures that live in Redis (devices, tasks) are read when Prometheus scrapes
(``AsyncCollector``): on the service's own event loop, with a deadline, so every replica
exports the same current view and nothing is kept twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .errors import EchoError
from .secretfiles import check_private

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ the contract

TASK_LABELS = ("dataflow", "task", "device")
TASK_RECORDS_IN = "echo_task_records_in"  # exported as ..._total (a counter)
TASK_RECORDS_OUT = "echo_task_records_out"
TASK_ERRORS = "echo_task_errors"
TASK_RESTARTS = "echo_task_restarts"
TASK_INPUT_LAG = "echo_task_input_lag_records"
TASK_STATE = "echo_task_state"  # + label state: 1 for the current state, 0 for the others
DATAFLOWS = "echo_dataflows"  # label state: how many dataflows are in it

DEVICE_UP = "echo_device_up"  # labels device, tier: 1 while online
DEVICE_STATUS = "echo_device_status"  # labels device, tier, status: 1 for the current status
DEVICE_CPU = "echo_device_cpu_ratio"
DEVICE_MEMORY = "echo_device_memory_ratio"
DEVICE_RTT = "echo_device_rtt_seconds"
DEVICE_TASKS = "echo_device_tasks"
# heartbeat sent (device clock) -> stored by the registry
HEARTBEAT_LAG = "echo_registry_heartbeat_lag_seconds"

CHANNEL_LABELS = ("dataflow", "edge", "transport")
CHANNEL_MESSAGES = "echo_channel_messages"
CHANNEL_BYTES = "echo_channel_bytes"
CHANNEL_RETRANSMITS = "echo_channel_retransmits"

DEPLOY_DURATION = "echo_deploy_duration_seconds"
MIGRATION_DOWNTIME = "echo_migration_downtime_seconds"
MIGRATIONS = "echo_migrations"  # label result
FAILOVERS = "echo_failovers"
RECONCILE_LAG = "echo_reconcile_lag_seconds"
API_REQUESTS = "echo_api_requests"  # labels route, code
API_DURATION = "echo_api_request_duration_seconds"  # label route
MQTT_PARTS_DROPPED = "echo_mqtt_parts_dropped"  # label reason: messages in parts dropped on receipt

# deployments, moves and API calls: milliseconds to a minute
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# sub-second lags (heartbeats): a millisecond to a few seconds
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the service's loop to read its figures


class MetricsError(EchoError):
    """The metrics endpoint cannot be served as configured."""


def new_registry() -> CollectorRegistry:
    """A service's registry: its own metrics plus the process' (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def histogram(
    registry: CollectorRegistry,
    name: str,
    doc: str,
    labels: Iterable[str] = (),
    buckets: tuple[float, ...] = SECONDS_BUCKETS,
) -> Histogram:
    return Histogram(name, doc, labelnames=tuple(labels), buckets=buckets, registry=registry)


def counter(registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    return Counter(name, doc, labelnames=tuple(labels), registry=registry)


def gauge(registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return Gauge(name, doc, labelnames=tuple(labels), registry=registry)


# ------------------------------------------------------------------ figures read at scrape time


class AsyncCollector(Collector):
    """Metric families computed by a coroutine on the service's event loop at each scrape.

    ``read()`` returns the families (``prometheus_client.core`` *MetricFamily objects);
    a scrape that cannot get them in time (Redis down, loop busy) exports none of them and
    counts the failure in ``echo_scrape_errors_total{collector}``, instead of failing the
    whole scrape (the process' own metrics still tell that the service is alive)."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        read: Callable[[], Awaitable[list[Metric]]],
        errors: Counter,
        timeout: float = SCRAPE_TIMEOUT,
    ) -> None:
        self.name = name
        self.loop = loop
        self._read = read
        self._errors = errors
        self.timeout = timeout
        self._failing = False

    def describe(self) -> list[Metric]:
        return []  # families vary with the fleet; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        if not self.loop.is_running():
            return []  # the service is starting or stopping: nothing to read them with
        try:
            if asyncio.get_running_loop() is self.loop:
                return []  # called on the loop itself: it cannot wait for itself
        except RuntimeError:
            pass  # the usual case: the endpoint's own thread
        try:
            future = asyncio.run_coroutine_threadsafe(self._coro(), self.loop)
            families = future.result(self.timeout)
        except Exception as e:
            self._errors.labels(self.name).inc()
            if not self._failing:
                log.warning(
                    "metrics %s: cannot read the figures (%s); exporting none until it can", self.name, e
                )
                self._failing = True
            return []
        if self._failing:
            log.info("metrics %s: figures readable again", self.name)
            self._failing = False
        return families

    async def _coro(self) -> list[Metric]:
        return await self._read()


class CountsCollector(Collector):
    """A counter read at scrape time from a ``collections.Counter`` kept elsewhere (by one
    label), e.g. the MQTT adapter's messages in parts dropped, by reason."""

    def __init__(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, int]]) -> None:
        self.name, self.doc, self.label, self.read = name, doc, label, read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, n in sorted(self.read().items()):
            family.add_metric([value], float(n))
        yield family


def scrape_errors(registry: CollectorRegistry) -> Counter:
    return counter(
        registry,
        "echo_scrape_errors",
        "scrapes that could not read a collector's figures in time (the collector exported none)",
        ("collector",),
    )


# ------------------------------------------------------------------ the endpoint


class MetricsServer:
    """``/metrics`` over HTTPS, clients authenticated by a certificate of ECHO's CA.

    ``port`` 0: no endpoint (``start`` does nothing). Otherwise the certificate, its key
    (0600) and the CA are required: ECHO serves no plaintext, anonymous metrics."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        port: int,
        host: str,
        cert_file: Path | None,
        key_file: Path | None,
        ca_file: Path | None,
        service: str,
    ) -> None:
        self.registry = registry
        self.port = port
        self.host = host
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.service = service
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """``MetricsError`` naming the setting that is missing or unusable."""
        files = {
            "ECHO_METRICS_CERT_FILE": self.cert_file,
            "ECHO_METRICS_KEY_FILE": self.key_file,
            "ECHO_CA_FILE": self.ca_file,
        }
        for var, path in files.items():
            if path is None:
                raise MetricsError(
                    f"ECHO_METRICS_PORT is set but {var} is not: metrics are served over mutual TLS only"
                )
            if not path.is_file():
                raise MetricsError(f"{var} ({path}) is not a readable file")
        assert self.key_file is not None
        check_private(self.key_file)

    def start(self) -> None:
        if not self.port:
            return
        self.check()
        try:
            self._server, self._thread = start_http_server(
                self.port,
                addr=self.host,
                registry=self.registry,
                certfile=str(self.cert_file),
                keyfile=str(self.key_file),
                client_cafile=str(self.ca_file),
                client_auth_required=True,
            )
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {self.host}:{self.port}: {e}") from e
        log.info(
            "%s metrics at https://%s:%d/metrics (client certificates of the CA)",
            self.service,
            self.host,
            self.port,
        )

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(Exception):
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


def serve(registry: CollectorRegistry, settings: Any, service: str) -> MetricsServer:
    """A ``MetricsServer`` from a service's settings (``CommonSettings`` fields), started."""
    server = MetricsServer(
        registry,
        port=settings.metrics_port,
        host=settings.metrics_host,
        cert_file=settings.metrics_cert_file,
        key_file=settings.metrics_key_file,
        ca_file=settings.ca_file,
        service=service,
    )
    server.start()
    return server
