"""The master's figures for Prometheus: tasks and dataflows (read from Redis at each
scrape), deployments, reconciliation and the REST API (measured as they happen).

Task figures come from the agents' reports, which the master keeps in the task records:
records in and out (counters of the running copy: they restart from zero when the task
moves or restarts, which Prometheus' ``rate()`` handles), the input lag (what its producers
emitted that it has not taken yet), restarts (deployments beyond the first) and the
current state. Only active dataflows are exported: the label sets stay bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echo_shared import metrics as m
from echo_shared.models import DataflowState

from .store import Dataflow, DataflowStore

UNMATCHED_ROUTE = "unmatched"  # requests no route took (404s): one label value, whatever the path


def input_lag(df: Dataflow, task: str) -> int:
    """Records its producers emitted that the task has not taken yet (as last reported)."""
    rec = df.tasks.get(task)
    if rec is None:
        return 0
    lag = 0
    for edge in df.effective.edges:
        if edge.to != task:
            continue
        producer = df.tasks.get(edge.from_)
        if producer is not None:
            lag += max(0, producer.out_seq - rec.hwm.get(edge.from_, 0))
    return lag


def task_families(dataflows: list[Dataflow], errors: dict[tuple[str, str, str], int]) -> list[Metric]:
    labels = list(m.TASK_LABELS)
    records_in = CounterMetricFamily(m.TASK_RECORDS_IN, "records the task took in (this copy)", labels=labels)
    records_out = CounterMetricFamily(
        m.TASK_RECORDS_OUT, "records the task emitted (this copy)", labels=labels
    )
    failures = CounterMetricFamily(
        m.TASK_ERRORS, "times the task failed (seen by this master)", labels=labels
    )
    restarts = CounterMetricFamily(m.TASK_RESTARTS, "deployments of the task beyond its first", labels=labels)
    lag = GaugeMetricFamily(
        m.TASK_INPUT_LAG, "records its producers emitted that it has not taken yet", labels=labels
    )
    state = GaugeMetricFamily(
        m.TASK_STATE, "1 for the task's current state (one series per task)", labels=[*labels, "state"]
    )
    count = GaugeMetricFamily(m.DATAFLOWS, "dataflows in each state (active ones)", labels=["state"])
    ch_labels = list(m.CHANNEL_LABELS)
    messages = CounterMetricFamily(
        m.CHANNEL_MESSAGES, "messages sent on the edge (first sends)", labels=ch_labels
    )
    size = CounterMetricFamily(m.CHANNEL_BYTES, "payload bytes sent on the edge", labels=ch_labels)
    again = CounterMetricFamily(m.CHANNEL_RETRANSMITS, "messages sent again on the edge", labels=ch_labels)
    per_state = dict.fromkeys((s.value for s in DataflowState), 0)
    for df in dataflows:
        per_state[df.state.value] += 1
        for rec in df.tasks.values():
            key = [df.id, rec.id, rec.device or ""]
            records_in.add_metric(key, float(rec.records_in))
            records_out.add_metric(key, float(rec.records_out))
            failures.add_metric(key, float(errors.get((df.id, rec.id, rec.device or ""), 0)))
            restarts.add_metric(key, float(max(0, rec.generation - 1)))
            lag.add_metric(key, float(input_lag(df, rec.id)))
            state.add_metric([*key, rec.state.value], 1.0)
            for consumer, c in rec.channels.items():
                edge = [df.id, f"{rec.id}->{consumer}", c.transport]
                messages.add_metric(edge, float(c.messages))
                size.add_metric(edge, float(c.bytes))
                again.add_metric(edge, float(c.retransmits))
    for name, n in per_state.items():
        count.add_metric([name], float(n))
    return [records_in, records_out, failures, restarts, lag, state, count, messages, size, again]


class MasterMetrics:
    def __init__(self, store: DataflowStore, loop: asyncio.AbstractEventLoop) -> None:
        self.registry: CollectorRegistry = m.new_registry()
        self.store = store
        self.errors: dict[tuple[str, str, str], int] = {}
        self.deploy_duration = m.histogram(
            self.registry, m.DEPLOY_DURATION, "a dataflow's submission to its first running state"
        )
        self.reconcile_lag = m.gauge(
            self.registry,
            m.RECONCILE_LAG,
            "how long the last dataflow that needed attention waited for its reconcile pass",
        )
        self.api_requests = m.counter(self.registry, m.API_REQUESTS, "REST API requests", ("route", "code"))
        self.api_duration = m.histogram(
            self.registry, m.API_DURATION, "REST API request durations (to the end of the answer)", ("route",)
        )
        self.registry.register(m.AsyncCollector("tasks", loop, self._tasks, m.scrape_errors(self.registry)))

    async def _tasks(self) -> list[Metric]:
        dataflows = await self.store.all(await self.store.active_ids())
        active = {df.id for df in dataflows}
        for key in [k for k in self.errors if k[0] not in active]:  # ended dataflows: forgotten
            del self.errors[key]
        return task_families(dataflows, dict(self.errors))

    def task_failed(self, dataflow: str, task: str, device: str) -> None:
        key = (dataflow, task, device)
        self.errors[key] = self.errors.get(key, 0) + 1

    def deployed(self, seconds: float) -> None:
        self.deploy_duration.observe(max(0.0, seconds))

    def waited(self, seconds: float) -> None:
        self.reconcile_lag.set(max(0.0, seconds))


class ApiMetrics:
    """Pure ASGI: counts each request by its route template (bounded) and status code."""

    def __init__(self, app: ASGIApp, metrics: MasterMetrics, routes: list[Any]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's (the same list: routers included later count too)

    def route_of(self, scope: Scope) -> str:
        route: Any = scope.get("route")
        if route is None:  # answered before routing (e.g. refused by the auth layer)
            for r in self.routes:
                match, _ = r.matches(scope)
                if match is Match.FULL:
                    route = r
                    break
        return getattr(route, "path", None) or UNMATCHED_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def tracked(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            path = self.route_of(scope)
            self.metrics.api_requests.labels(path, str(code)).inc()
            self.metrics.api_duration.labels(path).observe(time.perf_counter() - started)
