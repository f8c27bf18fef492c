"""Shared service plumbing: error shapes, field paths, rate limits (telemetry: test_telemetry.py)."""

from __future__ import annotations

from scalerec_core.http import RateLimiter, field_path


def test_field_paths_read_like_the_request() -> None:
    assert field_path(("body", "events", 3, "timestamp")) == "events[3].timestamp"
    assert field_path(("query", "k")) == "k"
    assert field_path(("body",)) == "body"


def test_rate_limiter_allows_a_burst_then_refuses() -> None:
    limiter = RateLimiter(per_second=1, burst=3)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # per caller
    assert 1 <= limiter.wait_seconds("a") <= 3  # what Retry-After says: the rest of the window
