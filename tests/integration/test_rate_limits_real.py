"""Rate limits shared by replicas: two collectors on one real Memcached draw on one budget per key."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scalerec_collector.config import CollectorSettings
from scalerec_collector.main import create_app
from scalerec_core.http import RateLimiter

pytestmark = [pytest.mark.integration]


def test_two_replicas_share_one_budget_per_key(shared_memcached: list[tuple[str, int]], tmp_path: Path) -> None:
    cache_url = "memcached://" + ",".join(f"{h}:{p}" for h, p in shared_memcached)
    key = f"k-{uuid.uuid4().hex[:8]}"  # a fresh key: a fresh counter
    settings = [
        CollectorSettings(
            data_dir=tmp_path / f"r{n}", api_keys=key, cache_url=cache_url, rate_limit_per_second=5
        )  # burst of 10 in a 2 s window
        for n in range(2)
    ]
    with TestClient(create_app(settings[0])) as a, TestClient(create_app(settings[1])) as b:
        codes = []
        for n in range(16):
            client = a if n % 2 else b
            r = client.post("/v1/events", json={"events": []}, headers={"X-API-Key": key})
            codes.append(r.status_code)
            if r.status_code == 429:  # the rest of the shared 2 s window
                assert r.headers["retry-after"] in {"1", "2"}, r.headers
    # Alone, each replica would have allowed 10 of its 8 requests; together they allow 10 of 16.
    assert codes.count(429) >= 5, codes
    assert codes[:10].count(429) == 0, codes


def test_a_dead_counter_store_lets_requests_through_and_is_left_alone_for_a_while() -> None:
    limiter = RateLimiter(1, burst=1, storage_url="memcached://127.0.0.1:1", backoff_s=60)
    t0 = time.monotonic()
    assert all(limiter.allow("k") for _ in range(50))
    assert time.monotonic() - t0 < 1.0  # one failed call, then no more attempts during the back-off


def test_two_deployments_on_one_memcached_keep_their_own_budgets(shared_memcached: list[tuple[str, int]]) -> None:
    """The same key id under two DEPLOYMENTs (a staging copy of production, say) counts apart."""
    cache_url = "memcached://" + ",".join(f"{h}:{p}" for h, p in shared_memcached)
    suffix = uuid.uuid4().hex[:8]  # fresh counters on the shared stack
    key = "same-key-id"
    prod, staging = (RateLimiter(1, burst=3, storage_url=cache_url, namespace=f"{d}{suffix}") for d in ("p", "s"))
    assert [prod.allow(key) for _ in range(4)] == [True, True, True, False]
    # Before namespacing, staging found prod's counter at its limit: its first request was refused.
    assert [staging.allow(key) for _ in range(4)] == [True, True, True, False]
    # And within one deployment, the failed-authentication budget is not the request budget.
    failures = RateLimiter(1, burst=3, storage_url=cache_url, namespace=f"p{suffix}", name="auth-failures")
    assert failures.allow(key)


def test_a_service_names_its_counters_after_its_deployment(
    shared_memcached: list[tuple[str, int]], tmp_path: Path
) -> None:
    cache_url = "memcached://" + ",".join(f"{h}:{p}" for h, p in shared_memcached)
    key = f"k-{uuid.uuid4().hex[:8]}"
    apps = [
        create_app(
            CollectorSettings(
                deployment=f"d{n}{uuid.uuid4().hex[:6]}",
                data_dir=tmp_path / f"d{n}",
                api_keys=key,
                cache_url=cache_url,
                rate_limit_per_second=1,
            )  # a burst of 2 per deployment
        )
        for n in range(2)
    ]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        post = {"json": {"events": []}, "headers": {"X-API-Key": key}}
        assert [a.post("/v1/events", **post).status_code == 429 for _ in range(3)] == [False, False, True]
        assert [b.post("/v1/events", **post).status_code == 429 for _ in range(3)] == [False, False, True]
