"""OpenTelemetry set-up and propagation of trace context through HTTP and the bus.

One call per process, ``setup_telemetry``, chooses the exporter (none, console or
OTLP over HTTP).  Bus messages carry the W3C ``traceparent`` in their headers, so a
span started in the collector continues in the preprocessor, the trainer and the
ranker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

Headers = Sequence[tuple[str, bytes]]

_configured = False


def setup_telemetry(service: str, exporter: str = "none", endpoint: str = "http://127.0.0.1:4318") -> None:
    """Install tracer and meter providers for this process. Safe to call more than once."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": service, "service.namespace": "scalerec"})
    tracer_provider = TracerProvider(resource=resource)
    readers = []
    if exporter == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=30_000))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/")
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"), export_interval_millis=15_000
            )
        )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


def shutdown_telemetry() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def inject_headers(extra: Headers = ()) -> list[tuple[str, bytes]]:
    """Headers for an outgoing bus message: the current trace context plus ``extra``."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return [*extra, *((k, v.encode()) for k, v in carrier.items())]


def context_from_headers(headers: Headers) -> otel_context.Context:
    carrier = {k: v.decode(errors="replace") for k, v in headers}
    return extract(carrier)


@contextmanager
def consume_span(name: str, headers: Headers, **attributes: Any) -> Iterator[trace.Span]:
    """A consumer span that continues the trace the producer put in the headers."""
    ctx = context_from_headers(headers)
    with tracer("scalerec.bus").start_as_current_span(
        name, context=ctx, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def install_http_tracing(app: Any, service: str) -> None:
    """Server spans and request metrics for a FastAPI/Starlette app, continuing callers' traces."""
    http_tracer = tracer(f"scalerec.{service}.http")
    requests = meter(f"scalerec.{service}").create_counter("http.server.requests", description="HTTP requests")
    duration = meter(f"scalerec.{service}").create_histogram(
        "http.server.duration", unit="ms", description="HTTP request duration"
    )

    @app.middleware("http")
    async def _trace(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        ctx = extract(dict(request.headers))
        route = request.url.path
        start = time.perf_counter()
        with http_tracer.start_as_current_span(
            f"{request.method} {route}",
            context=ctx,
            kind=trace.SpanKind.SERVER,
            attributes={"http.method": request.method, "http.target": route},
        ) as span:
            response = await call_next(request)
            span.set_attribute("http.status_code", response.status_code)
            trace_id = span.get_span_context().trace_id
            if trace_id:
                response.headers["traceparent-id"] = format(trace_id, "032x")
        attrs = {"method": request.method, "route": route, "status": response.status_code}
        requests.add(1, attrs)
        duration.record((time.perf_counter() - start) * 1000, attrs)
        return response
