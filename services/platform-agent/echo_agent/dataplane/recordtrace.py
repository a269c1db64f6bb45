"""Sampled record tracing (``ECHO_TRACE_RECORDS``, a fraction: 0.001 traces one record in a
thousand): a sampled record's path across devices is one trace, with a span per hop.

A source samples the records it emits: each sampled one gets a root span ("record from
{task}") and its messages carry the W3C ``traceparent`` (an MQTT 5 user property, a NATS
header). A consumer that takes such a message processes its records inside a child span
("record at {task}"), and what the operator emits meanwhile carries that span on: the trace
follows the record (and what was made of it) to the sinks. Off (0, the default), nothing
runs per record but a float comparison.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
# the traceparent outgoing messages carry while a sampled record is being handled
_CARRIED: ContextVar[dict[str, str] | None] = ContextVar("echo_record_trace", default=None)


def carried() -> dict[str, str] | None:
    """User properties for a message emitted now (None: no sampled record in hand)."""
    return _CARRIED.get()


class RecordTracer:
    def __init__(self, rate: float, *, dataflow: str, task: str, device: str) -> None:
        self.rate = rate
        self.attributes = {"echo.dataflow": dataflow, "echo.task": task, "echo.device": device}
        self.task = task
        self._tracer = trace.get_tracer("echo.records")

    @property
    def on(self) -> bool:
        return self.rate > 0.0

    def sampled(self) -> bool:
        return self.rate > 0.0 and random.random() < self.rate

    @contextlib.contextmanager
    def source(self, seq: int) -> Iterator[None]:
        """A sampled record's first span (a root: a trace of its own)."""
        with self._span(f"record from {self.task}", Context(), seq=seq):
            yield

    @contextlib.contextmanager
    def hop(self, traceparent: str, producer: str, records: int) -> Iterator[None]:
        """Records that came with a sampled one's trace: a span of this hop inside it."""
        parent = _PROPAGATOR.extract({TRACEPARENT: traceparent})
        with self._span(f"record at {self.task}", parent, producer=producer, records=records):
            yield

    @contextlib.contextmanager
    def _span(self, name: str, parent: Context, **attrs: str | int) -> Iterator[None]:
        kind = SpanKind.PRODUCER if not attrs.get("producer") else SpanKind.CONSUMER
        with self._tracer.start_as_current_span(name, context=parent, kind=kind) as span:
            span.set_attributes({**self.attributes, **{f"echo.{k}": v for k, v in attrs.items()}})
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            token = _CARRIED.set({TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else None)
            try:
                yield
            finally:
                _CARRIED.reset(token)
