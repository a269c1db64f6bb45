"""OpenTelemetry bootstrap and trace-context propagation.

``setup_tracing(service)`` is called once by each service at start: spans go to the
OTLP/HTTP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific
variable) is set, and nowhere otherwise. Log records go the same way when
``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` is set (e.g. Loki's OTLP endpoint: compose), each
carrying the trace and span it was written in, besides the JSON lines on stderr.
Context travels as W3C ``traceparent`` in NATS headers and MQTT 5 user properties;
``inject()`` and ``extract()`` convert.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_log_provider: Any = None


def setup_tracing(service_name: str, *, attributes: Mapping[str, str] | None = None) -> TracerProvider:
    """Install the global tracer provider for this process (idempotent)."""
    global _provider
    if _provider is not None:
        return _provider
    res = {"service.name": service_name, "service.namespace": "echo"}
    if attributes:
        res.update(attributes)
    provider = TracerProvider(resource=Resource.create(res))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    if os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        _export_logs(provider.resource)
    return provider


def _export_logs(resource: Resource) -> None:
    """Ship log records over OTLP (batched, off the event loop) with their trace context."""
    global _log_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    _log_provider = LoggerProvider(resource=resource)
    _log_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    logging.getLogger().addHandler(LoggingHandler(logger_provider=_log_provider))


def shutdown_tracing() -> None:
    """Flush and stop exporting (called last in a service's shutdown)."""
    global _provider
    global _log_provider
    if _provider is not None:
        _provider.force_flush(timeout_millis=3000)
        _provider.shutdown()
        _provider = None
    if _log_provider is not None:
        _log_provider.force_flush(timeout_millis=3000)
        _log_provider.shutdown()
        _log_provider = None


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as headers/user properties (``traceparent``...)."""
    carrier = {} if carrier is None else carrier
    _PROPAGATOR.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    return _PROPAGATOR.extract(dict(carrier or {}))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
