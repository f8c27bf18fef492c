"""Shared service plumbing: error shapes, field paths, trace context through bus headers."""

from __future__ import annotations

from opentelemetry import trace
from scalerec_core.http import RateLimiter, field_path
from scalerec_core.telemetry import consume_span, inject_headers, setup_telemetry, tracer


def test_field_paths_read_like_the_request() -> None:
    assert field_path(("body", "events", 3, "timestamp")) == "events[3].timestamp"
    assert field_path(("query", "k")) == "k"
    assert field_path(("body",)) == "body"


def test_rate_limiter_allows_a_burst_then_refuses() -> None:
    limiter = RateLimiter(per_second=1, burst=3)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # per caller
    assert 1 <= limiter.wait_seconds("a") <= 3  # what Retry-After says: the rest of the window


def test_trace_context_travels_through_message_headers() -> None:
    setup_telemetry("test", "none")
    with tracer("test").start_as_current_span("produce") as producer_span:
        headers = inject_headers([("x", b"1")])
    assert ("x", b"1") in headers and any(k == "traceparent" for k, _ in headers)
    with consume_span("consume", headers) as consumer_span:
        assert consumer_span.get_span_context().trace_id == producer_span.get_span_context().trace_id
        assert trace.get_current_span() is consumer_span
