"""Optional OpenTelemetry tracing of one push: the intake's span, its plan's, and one per unit, one trace.

Off unless `[tracing] enabled`. The trace context travels in each work item's `traceparent` (W3C format),
so a unit handled by any worker, minutes later, joins its push's trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pushgw.settings import TracingSettings

_state: dict[str, Any] = {}  # the process's tracer and provider: OpenTelemetry's are process-global too


def configure_tracing(settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
    """Install the tracer once per process (later calls change nothing); `exporter` replaces OTLP (tests)."""
    if not settings.enabled or "tracer" in _state:
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _state.update(provider=provider, tracer=provider.get_tracer("pushgw"))


def shutdown_tracing() -> None:
    """Flush what is buffered and forget the tracer (process exit, tests)."""
    provider = _state.pop("provider", None)
    _state.pop("tracer", None)
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def push_span(name: str, traceparent: str | None, **attributes: str | int) -> Iterator[None]:
    """A span for `name`, child of `traceparent` (a work item's) when given; nothing when tracing is off."""
    tracer = _state.get("tracer")
    if tracer is None:
        yield
        return
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
    named = {f"pushgw.{key}": value for key, value in attributes.items()}
    with tracer.start_as_current_span(name, context=parent, attributes=named):
        yield


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the span in progress, for the work items it publishes."""
    if "tracer" not in _state:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
