"""The fleet's figures for Prometheus: read from the device records at each scrape.

Devices sit behind NAT and are never scraped; their load and round trips arrive with
heartbeats, which the registry keeps in Redis. Every replica exports the same view.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from echo_shared import metrics as m
from echo_shared.models import DeviceRecord, DeviceStatus

from .store import DeviceStore

# the broker whose round trip ``echo_device_rtt_seconds`` reports: the control link
CONTROL_BROKER = "mqtt"


def device_families(records: list[DeviceRecord]) -> list[Metric]:
    up = GaugeMetricFamily(m.DEVICE_UP, "1 while the device is online", labels=["device", "tier"])
    status = GaugeMetricFamily(
        m.DEVICE_STATUS,
        "1 for the device's current status, 0 for the others",
        labels=["device", "tier", "status"],
    )
    cpu = GaugeMetricFamily(m.DEVICE_CPU, "CPU in use, 0-1 (as last reported)", labels=["device"])
    memory = GaugeMetricFamily(m.DEVICE_MEMORY, "memory in use, 0-1 (as last reported)", labels=["device"])
    rtt = GaugeMetricFamily(
        m.DEVICE_RTT,
        "measured round trip from the device to its MQTT broker (as last reported)",
        labels=["device"],
    )
    tasks = GaugeMetricFamily(m.DEVICE_TASKS, "tasks the device reports running", labels=["device"])
    for d in records:
        up.add_metric([d.id, d.tier.value], 1.0 if d.status is DeviceStatus.online else 0.0)
        for s in DeviceStatus:
            status.add_metric([d.id, d.tier.value, s.value], 1.0 if d.status is s else 0.0)
        if d.cpu_percent is not None:
            cpu.add_metric([d.id], d.cpu_percent / 100.0)
        if d.memory_percent is not None:
            memory.add_metric([d.id], d.memory_percent / 100.0)
        ms = d.rtt_ms.get(CONTROL_BROKER)
        if ms is None and d.rtt_ms:
            ms = max(d.rtt_ms.values())
        if ms is not None:
            rtt.add_metric([d.id], ms / 1000.0)
        tasks.add_metric([d.id], float(d.tasks))
    return [up, status, cpu, memory, rtt, tasks]


def heartbeat_lag(registry: CollectorRegistry) -> Histogram:
    """Seconds from a heartbeat's send time (the device's clock) to its record in Redis: the
    intake's queueing and write, plus the broker path and any clock skew."""
    return m.histogram(
        registry, m.HEARTBEAT_LAG, "heartbeat sent -> stored (device clock)", buckets=m.LAG_BUCKETS
    )


def registry_metrics(store: DeviceStore, loop: asyncio.AbstractEventLoop) -> CollectorRegistry:
    registry = m.new_registry()

    async def read() -> list[Metric]:
        return device_families([record for record, _ in await store.all()])

    registry.register(m.AsyncCollector("devices", loop, read, m.scrape_errors(registry)))
    return registry
