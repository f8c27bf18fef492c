"""Telemetry: settings from the standard OTEL_* variables, resource attributes, route templates in
span names and metric labels, trace context through bus headers, batch spans linked to every message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.util._once import Once
from scalerec_core import __version__
from scalerec_core.http import install_common
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import (
    batch_span,
    build_resource,
    build_sampler,
    context_from_headers,
    http_telemetry,
    inject_headers,
    setup_telemetry,
    tracer,
)


def test_otel_variables_are_read_by_the_settings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ranker-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,k8s.pod.name=ranker-7%2Cx")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = ServiceSettings(service_name="ranker", deployment_environment="staging")
    assert settings.otel_exporter_otlp_endpoint == "http://collector:4318"
    attributes = build_resource(settings).attributes
    assert attributes["service.name"] == "ranker-eu"
    assert attributes["service.version"] == __version__
    assert attributes["deployment.environment"] == "prod"  # OTEL_RESOURCE_ATTRIBUTES wins
    assert attributes["k8s.pod.name"] == "ranker-7,x"  # percent-decoded
    sampler = build_sampler(settings)
    assert isinstance(sampler, ParentBased) and isinstance(sampler._root, TraceIdRatioBased)
    assert sampler._root.rate == 0.25


def test_resource_defaults_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    settings = ServiceSettings(service_name="collector")
    a, b = build_resource(settings).attributes, build_resource(settings).attributes
    assert a["service.name"] == "collector" and a["deployment.environment"] == "development"
    assert a["service.instance.id"] != b["service.instance.id"]  # one per process (and per call)
    assert build_sampler(settings) is ALWAYS_OFF  # nothing exported: no span recorded, context still flows
    with pytest.raises(ValueError, match=r"otel_traces_exporter"):
        ServiceSettings(otel_traces_exporter="jaeger")
    with pytest.raises(ValueError, match="not key=value"):
        build_resource(ServiceSettings(otel_resource_attributes="oops"))


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    """A recording global tracer provider for this test (OTel's globals are set-once: reset and restore)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    yield exporter
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = saved
    if saved is not None:
        trace._TRACER_PROVIDER_SET_ONCE._done = True


def test_spans_and_metric_labels_use_the_route_template_never_the_raw_path(
    recorded: InMemorySpanExporter,
) -> None:
    reader = InMemoryMetricReader()
    app = FastAPI(
        telemetry={
            **http_telemetry(),
            "tracer_provider": trace.get_tracer_provider(),
            "meter_provider": MeterProvider(metric_readers=[reader]),
        }
    )

    @app.get("/v1/users/{user_id}/history")
    async def history(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    install_common(app, ServiceSettings(auth="disabled"), service="test")
    with TestClient(app) as client:
        for user in ("u0001", "u0002", "alice@example.com"):
            assert client.get(f"/v1/users/{user}/history").status_code == 200
        assert client.get("/v1/no/such/u0003").status_code == 404
        assert client.get("/healthz").status_code == 200  # probes: no span, no metric
    names = [s.name for s in recorded.get_finished_spans()]
    assert names.count("GET /v1/users/{user_id}/history") == 3
    assert not [n for n in names if "u000" in n or "alice" in n or "healthz" in n]
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        (metric.name, dict(point.attributes or {}))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    ]
    durations = [attrs for name, attrs in points if name == "http.server.request.duration"]
    routes = {attrs.get("http.route") for attrs in durations}
    assert routes == {"/v1/users/{user_id}/history", None}  # the 404 matched no route: no label at all
    values = [str(v) for _, attrs in points for v in attrs.values()]
    assert not [v for v in values if "u000" in v or "alice" in v or v == "/healthz"]
    assert {a["http.response.status_code"] for a in durations} == {200, 404}


def test_trace_context_travels_through_message_headers(recorded: InMemorySpanExporter) -> None:
    with tracer("test").start_as_current_span("produce") as producer_span:
        headers = inject_headers([("x", b"1")])
    assert ("x", b"1") in headers and any(k == "traceparent" for k, _ in headers)
    parent = trace.get_current_span(context_from_headers(headers)).get_span_context()
    assert parent.trace_id == producer_span.get_span_context().trace_id


def test_a_batch_span_links_to_every_messages_trace(recorded: InMemorySpanExporter) -> None:
    produced = []
    for n in range(3):
        with tracer("test").start_as_current_span(f"request {n}") as span:
            produced.append((span.get_span_context(), inject_headers()))
    batch = [headers for _, headers in produced] + [produced[0][1], []]  # a re-delivery, and one without context
    with batch_span("events process", batch) as span:
        inner_headers = inject_headers()
    finished = {s.name: s for s in recorded.get_finished_spans()}
    linked = {(link.context.trace_id, link.context.span_id) for link in finished["events process"].links}
    assert linked == {(ctx.trace_id, ctx.span_id) for ctx, _ in produced}
    # What the batch produces continues the batch span's own trace.
    out = trace.get_current_span(context_from_headers(inner_headers)).get_span_context()
    assert out.trace_id == span.get_span_context().trace_id


def test_metrics_need_no_api_key_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from scalerec_core import telemetry

    setup_telemetry(ServiceSettings())  # the defaults export to Prometheus (no-op when already set up)
    monkeypatch.setattr(telemetry, "_prometheus", True)
    app = FastAPI(telemetry=http_telemetry())

    @app.get("/v1/private")
    async def private() -> dict[str, str]:
        return {}

    install_common(app, ServiceSettings(api_keys="k1:serve"), service="test")
    with TestClient(app) as client:
        assert client.get("/v1/private").status_code == 401
        client.get("/v1/private", headers={"X-API-Key": "k1"})
        scraped = client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'http_route="/v1/private"' in scraped.text
        monkeypatch.setattr(telemetry, "_prometheus", False)  # OTEL_METRICS_EXPORTER without prometheus
        off = client.get("/metrics")
        assert off.status_code == 404 and "OTEL_METRICS_EXPORTER" in off.json()["detail"]
