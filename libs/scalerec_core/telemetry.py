"""OpenTelemetry set-up, Prometheus ``/metrics``, and trace context through HTTP, gRPC and the bus.

One call per process, ``setup_telemetry(settings)``, builds the tracer and meter providers from
the service's settings class, which reads the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER``, ``OTEL_TRACES_SAMPLER``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_METRICS_EXPORTER`` ...): the settings stay the one place
configuration comes from, and the SDK is never left to read the environment on its own.

Instrumentation, one way each:

* **HTTP server**: FastAPI's built-in OpenTelemetry (``FastAPI(telemetry=http_telemetry())``), with
  server spans and the stable ``http.server.request.duration`` histogram labelled by the route
  template FastAPI's router selected (``/v1/users/{user_id}/history``), never the raw path.  It is
  preferred over ``opentelemetry-instrumentation-fastapi``: the same semantic conventions, but it
  takes the route from the router instead of matching every route a second time, and a request
  costs about half as much (docs/observability.md); FastAPI turns its own off when the contrib
  middleware is present, so having both would be two ways.  Per-dependency "operation" spans and
  log records stay off (they were most of the ~15 % the ranker once lost to it).
* **HTTP clients** (httpx) and the **Triton gRPC client**: ``opentelemetry-instrumentation-httpx``
  and ``-grpc`` (aio client, instrumented by the Triton scorer, the one gRPC user), so calls
  carry ``traceparent`` and get client spans.
* **Bus**: messages carry the W3C ``traceparent`` in their headers; a batch span links to the
  trace of every message in it (``batch_span``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling as otel_sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.version import __version__ as sdk_version

from scalerec_core import __version__

if TYPE_CHECKING:
    from scalerec_core.settings import ServiceSettings

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
ScrapeHook = Callable[[], Awaitable[None]]

#: Paths that get no span and no request metrics: probes and scrapes would drown the real traffic.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: Resource attributes copied as labels onto every Prometheus series: with several uvicorn workers
#: per pod each process exports its own series (told apart by the instance id) instead of one
#: counter that seems to reset whenever a scrape reaches the other worker.
PROMETHEUS_RESOURCE_LABELS = frozenset({"service.name", "service.instance.id"})

_configured = False
_prometheus = False
_scrape_hooks: list[ScrapeHook] = []

_SAMPLERS: dict[str, Callable[[float], otel_sampling.Sampler]] = {
    "always_on": lambda _: otel_sampling.ALWAYS_ON,
    "always_off": lambda _: otel_sampling.ALWAYS_OFF,
    "traceidratio": lambda r: otel_sampling.TraceIdRatioBased(r),
    "parentbased_always_on": lambda _: otel_sampling.ParentBased(otel_sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: otel_sampling.ParentBased(otel_sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda r: otel_sampling.ParentBased(otel_sampling.TraceIdRatioBased(r)),
}
SAMPLER_NAMES = tuple(_SAMPLERS)


def parse_key_values(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (the ``OTEL_RESOURCE_ATTRIBUTES`` format, values percent-decoded) → dict."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"OTEL_RESOURCE_ATTRIBUTES: {pair.strip()!r} is not key=value")
        out[key.strip()] = unquote(value.strip())
    return out


def build_resource(settings: ServiceSettings) -> Resource:
    """Who is reporting: service name, version, this process's instance id, deployment environment.

    ``OTEL_RESOURCE_ATTRIBUTES`` adds to these and wins over them, ``OTEL_SERVICE_NAME`` over both.
    """
    attributes: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.namespace": "scalerec",
        "service.name": settings.service_name,
        "service.version": __version__,
        # One id per process (each uvicorn worker is one), prefixed with the pod's name when there is one.
        "service.instance.id": f"{os.environ.get('HOSTNAME') or 'local'}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        "deployment.environment": settings.deployment_environment,
        "scalerec.deployment": settings.deployment,
    }
    attributes.update(parse_key_values(settings.otel_resource_attributes))
    if settings.otel_service_name:
        attributes["service.name"] = settings.otel_service_name
    return Resource(attributes)


def build_sampler(settings: ServiceSettings) -> otel_sampling.Sampler:
    """``OTEL_TRACES_SAMPLER``; by default every trace when spans go somewhere, none when they go nowhere.

    Not sampled still means trace context flows (ids are made and propagated through HTTP, gRPC and
    bus headers), only no span is recorded.
    """
    name = settings.otel_traces_sampler or (
        "always_off" if settings.otel_traces_exporter == "none" else "parentbased_always_on"
    )
    ratio = settings.otel_traces_sampler_arg if settings.otel_traces_sampler_arg is not None else 1.0
    return _SAMPLERS[name](ratio)


def _exporters(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip() and part.strip() != "none"]


def setup_telemetry(settings: ServiceSettings) -> None:
    """Install tracer and meter providers and the client instrumentation. Safe to call more than once."""
    global _configured, _prometheus
    if _configured:
        return
    _configured = True
    resource = build_resource(settings)
    tracer_provider = TracerProvider(resource=resource, sampler=build_sampler(settings))
    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
    for name in _exporters(settings.otel_traces_exporter):
        if name == "console":
            tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    readers: list[MetricReader] = []
    interval = settings.otel_metric_export_interval
    for name in _exporters(settings.otel_metrics_exporter):
        if name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(
                PrometheusMetricReader(
                    scope_info_enabled=False, resource_attribute_filter=PROMETHEUS_RESOURCE_LABELS.__contains__
                )
            )
            _prometheus = True
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=interval))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=interval
                )
            )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _instrument_clients()


def _instrument_clients() -> None:
    """httpx: client spans and ``traceparent`` on every call (the gRPC client is instrumented where
    it is made, ``scalerec_adapters.triton_scorer``: only images with the Triton client carry gRPC)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


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


def _untraced(scope: Any) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def http_telemetry() -> TelemetryConfig:
    """``FastAPI(telemetry=...)``: server spans and request metrics by route template, nothing else.

    The providers are the global ones ``setup_telemetry`` installs in the lifespan, looked up per
    request, so an app built before the lifespan runs is instrumented all the same.
    """
    return {"tracing": True, "metrics": True, "logs": False, "operation_spans": False, "exclude": _untraced}


def prometheus_enabled() -> bool:
    return _prometheus


def on_scrape(hook: ScrapeHook) -> Callable[[], None]:
    """Run ``hook`` before each ``/metrics`` answer (e.g. ask the bus for consumer lag); returns an undo."""
    _scrape_hooks.append(hook)
    return lambda: _scrape_hooks.remove(hook) if hook in _scrape_hooks else None


async def render_metrics(timeout_s: float = 2.0) -> bytes:
    """Prometheus text exposition of this process's metrics, after the scrape hooks (each bounded)."""
    from prometheus_client import REGISTRY, generate_latest

    for hook in list(_scrape_hooks):
        try:
            await asyncio.wait_for(hook(), timeout=timeout_s)
        except Exception as exc:  # a slow bus makes a stale gauge, never a failed scrape
            log.debug("scrape hook %r failed: %s", hook, exc)
    return generate_latest(REGISTRY)


def inject_headers(extra: Headers = ()) -> list[tuple[str, bytes]]:
    """Headers for an outgoing bus message: the current trace context plus ``extra``."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return [*extra, *((k, v.encode()) for k, v in carrier.items())]


def context_from_headers(headers: Headers) -> otel_context.Context:
    carrier = {k: v.decode(errors="replace") for k, v in headers}
    return extract(carrier)


def message_links(headers_of_messages: Sequence[Headers]) -> list[trace.Link]:
    """One link per distinct producer trace among the messages (a batch has many parents)."""
    links: list[trace.Link] = []
    provider = trace.get_tracer_provider()
    if getattr(provider, "sampler", None) is otel_sampling.ALWAYS_OFF:
        return links  # nothing is recorded: reading every message's headers would be wasted
    seen: set[tuple[int, int]] = set()
    for headers in headers_of_messages:
        if not any(k == "traceparent" for k, _ in headers):
            continue
        span_context = trace.get_current_span(context_from_headers(headers)).get_span_context()
        key = (span_context.trace_id, span_context.span_id)
        if span_context.is_valid and key not in seen:
            seen.add(key)
            links.append(trace.Link(span_context))
    return links


@contextmanager
def batch_span(name: str, headers_of_messages: Sequence[Headers], **attributes: Any) -> Iterator[trace.Span]:
    """A consumer span for a whole batch, linked to the trace of every message in it.

    A batch span has no single parent (its messages come from many requests); messaging semantic
    conventions make it a root with a link per message, so each producer's trace leads to it.
    """
    with tracer("scalerec.bus").start_as_current_span(
        name,
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=message_links(headers_of_messages),
        attributes=attributes,
    ) as span:
        yield span
