"""Locust user journeys for ScaleRec: shoppers who act on what the ranker returns, and bulk ingesters.

Run it as its own process (``python loadtests/run.py`` or ``locust -f loadtests/locustfile.py``): importing
locust patches the whole interpreter with gevent, which nothing else in the repository should inherit.

* :class:`Shopper` — the journey that matters for latency: ask the ranker for recommendations, click one of
  the returned items (top ranks more often), sometimes add it to the cart and buy it.  The feedback goes
  back through the collector with ``context.model_version``, ``context.request_id`` and ``context.variant`` taken from the
  recommendation response, exactly as an app would send it, so online metrics can attribute it.
* :class:`BulkIngester` — a backend that forwards batches of events (and, if enabled, catalogue updates)
  to the collector: the throughput path.

Both services are addressed by absolute URLs, so the two hosts come from ``COLLECTOR_URL`` and
``RANKER_URL`` and Locust's single ``--host`` is not needed (and ignored).  Everything is configured by
environment variables (see :func:`settings`); they are read once when Locust loads this file, because
Locust reads ``host``, ``weight`` and ``wait_time`` off the user classes at that moment.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from locust import FastHttpUser, between, task
from locust.contrib.fasthttp import ResponseContextManager
from scalerec_synthetic import DEVICE_NAMES, DEVICE_SHARES, LOCALES, item_id, user_id


@dataclass(frozen=True)
class LoadSettings:
    """What a load test run talks to and how hard."""

    collector_url: str
    ranker_url: str
    users: int  # user ids are drawn from user_id(0) .. user_id(users - 1): the synthetic shop's format
    items: int  # item ids from item_id(0) .. item_id(items - 1)
    k: int
    batch: int  # events per bulk POST
    collector_key: str | None
    ranker_key: str | None
    shopper_weight: int
    ingest_weight: int
    item_weight: int  # relative weight of catalogue upserts inside the bulk ingester (0: never)
    think_min: float
    think_max: float


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


def shared_keys(value: str) -> tuple[str | None, str | None]:
    """``SCALEREC_API_KEY`` → (the collector's key, the ranker's key).

    One key for both, or the services' whole ``API_KEYS`` spec (``key:scope+scope,...``, what the
    release's Secret holds, which the chart hands to Locust): then a key with the ``ingest`` scope
    for the collector and one with ``serve`` for the ranker. A key never holds ``:`` or ``,``.
    """
    if not value:
        return None, None
    if ":" not in value and "," not in value:
        return value, value
    from scalerec_core.auth import KeyRing, Scope

    try:
        ring = KeyRing.parse(value)
    except ValueError as exc:
        raise SystemExit(f"SCALEREC_API_KEY: {exc}") from None
    return ring.key_for(Scope.INGEST), ring.key_for(Scope.SERVE)


def settings() -> LoadSettings:
    """Read the environment: ``COLLECTOR_URL``, ``RANKER_URL``, ``LOADTEST_*`` and the API keys."""
    collector_shared, ranker_shared = shared_keys(os.environ.get("SCALEREC_API_KEY", "").strip())
    return LoadSettings(
        collector_url=os.environ.get("COLLECTOR_URL", "http://127.0.0.1:8081").rstrip("/"),
        ranker_url=os.environ.get("RANKER_URL", "http://127.0.0.1:8084").rstrip("/"),
        users=max(1, _env_int("LOADTEST_USERS", 3000)),
        items=max(1, _env_int("LOADTEST_ITEMS", 1500)),
        k=max(1, _env_int("LOADTEST_K", 10)),
        batch=max(1, _env_int("LOADTEST_BATCH", 100)),
        collector_key=os.environ.get("COLLECTOR_API_KEY") or collector_shared,
        ranker_key=os.environ.get("RANKER_API_KEY") or ranker_shared,
        shopper_weight=max(0, _env_int("LOADTEST_SHOPPER_WEIGHT", 9)),
        ingest_weight=max(0, _env_int("LOADTEST_INGEST_WEIGHT", 1)),
        item_weight=max(0, _env_int("LOADTEST_ITEM_WEIGHT", 0)),
        think_min=max(0.0, _env_float("LOADTEST_THINK_MIN", 0.2)),
        think_max=max(0.0, _env_float("LOADTEST_THINK_MAX", 1.0)),
    )


SETTINGS = settings()

# The funnel of a shopper who got recommendations (per journey).
P_CLICK = 0.6
P_CART = 0.3  # given a click
P_BUY = 0.5  # given add_to_cart


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _headers(key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    return headers


def _popular_item(n_items: int) -> str:
    """A power-law draw over the item range: hot keys, as real traffic has (and caches must survive)."""
    return item_id(min(n_items - 1, int(n_items * random.random() ** 3)))


def _event(user: str, item: str, kind: str, context: dict[str, Any], value: float | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "item_id": item,
        "type": kind,
        "timestamp": _now(),
        "context": context,
    }
    if value is not None:
        event["value"] = value
    return event


def _problem(response: ResponseContextManager) -> str:
    """Why a response is not what was asked for; a refused connection has status 0 and an ``error``."""
    if not response.status_code:
        return f"no response: {getattr(response, 'error', None)!r}"
    return f"HTTP {response.status_code}: {(response.text or '')[:200]}"


def _check_accepted(response: ResponseContextManager, sent: int, what: str) -> None:
    """202 and every event accepted: the load test's events are valid, so a rejection is a bug."""
    if response.status_code != 202:
        response.failure(f"{what}: {_problem(response)}")
        return
    try:
        body = response.json()
    except ValueError:
        response.failure(f"{what}: response is not JSON: {(response.text or '')[:200]}")
        return
    if body.get("accepted") != sent or body.get("rejected", 0):
        response.failure(f"{what}: accepted {body.get('accepted')} of {sent}; errors {body.get('errors', [])[:3]}")


def _check_recommendations(response: ResponseContextManager, user: str, k: int) -> dict[str, Any] | None:
    """The response contract of ``GET /v1/recommendations``; returns the body when it holds."""
    if response.status_code != 200:
        response.failure(_problem(response))
        return None
    try:
        body = response.json()
    except ValueError:
        response.failure(f"response is not JSON: {(response.text or '')[:200]}")
        return None
    items = body.get("items")
    problems = []
    if body.get("user_id") != user:
        problems.append(f"user_id {body.get('user_id')!r} != {user!r}")
    if not isinstance(items, list) or len(items) > k:
        problems.append(f"items must be a list of at most {k}")
    elif not all(isinstance(it, dict) and isinstance(it.get("item_id"), str) for it in items):
        problems.append("every item needs an item_id")
    if not isinstance(body.get("request_id"), str) or not body.get("request_id"):
        problems.append("request_id missing")
    if body.get("model_version") is not None and not isinstance(body.get("model_version"), int):
        problems.append(f"model_version {body.get('model_version')!r} is not an int")
    if not isinstance(body.get("fallback"), bool):
        problems.append("fallback must be a bool")
    if problems:
        response.failure("; ".join(problems))
        return None
    return body


class Shopper(FastHttpUser):
    """One app user: recommendations, then a click and maybe a purchase, fed back with attribution."""

    host = SETTINGS.ranker_url
    weight = SETTINGS.shopper_weight
    wait_time = between(SETTINGS.think_min, max(SETTINGS.think_min, SETTINGS.think_max))

    def on_start(self) -> None:
        # A simulated user keeps its identity, device and locale across journeys, like a real one.
        self.user = user_id(random.randrange(SETTINGS.users))
        self.device = random.choices(DEVICE_NAMES, weights=DEVICE_SHARES)[0]
        self.locale = random.choice(LOCALES)

    @task
    def journey(self) -> None:
        session = f"lt-{uuid.uuid4().hex[:16]}"
        with self.client.get(
            f"{SETTINGS.ranker_url}/v1/recommendations",
            params={"user_id": self.user, "k": SETTINGS.k, "device": self.device, "locale": self.locale},
            headers=_headers(SETTINGS.ranker_key),
            name="/v1/recommendations",
            catch_response=True,
        ) as response:
            body = _check_recommendations(response, self.user, SETTINGS.k)
        if not body or not body["items"] or random.random() >= P_CLICK:
            return
        # Top positions get most clicks (position bias), as in any ranked list.
        rank = min(int(random.expovariate(0.5)), len(body["items"]) - 1)
        item = body["items"][rank]["item_id"]
        context = {
            "device": self.device,
            "locale": self.locale,
            "session_id": session,
            "referrer": "recommendation",
            "model_version": body.get("model_version"),
            "request_id": body["request_id"],
            "variant": body.get("variant"),
        }
        self._feedback([_event(self.user, item, "click", context), _event(self.user, item, "view", context)])
        if random.random() < P_CART:
            time.sleep(random.uniform(0.05, 0.3))  # gevent-patched: only this simulated user waits
            self._feedback([_event(self.user, item, "add_to_cart", context)])
            if random.random() < P_BUY:
                time.sleep(random.uniform(0.05, 0.3))
                self._feedback([_event(self.user, item, "purchase", context)])

    def _feedback(self, events: list[dict[str, Any]]) -> None:
        with self.client.post(
            f"{SETTINGS.collector_url}/v1/events",
            json={"events": events},
            headers=_headers(SETTINGS.collector_key),
            name="/v1/events [feedback]",
            catch_response=True,
        ) as response:
            _check_accepted(response, len(events), "feedback")


class BulkIngester(FastHttpUser):
    """A server-side integration that forwards batches of behaviour (and optionally catalogue updates)."""

    host = SETTINGS.collector_url
    weight = SETTINGS.ingest_weight
    wait_time = between(0.5, 1.5)

    _MIX = (("view", 70), ("click", 17), ("add_to_cart", 7), ("purchase", 3), ("rating", 3))

    @task(10)
    def post_events(self) -> None:
        kinds = random.choices([k for k, _ in self._MIX], weights=[w for _, w in self._MIX], k=SETTINGS.batch)
        events = []
        for kind in kinds:
            user = user_id(random.randrange(SETTINGS.users))
            context = {
                "device": random.choices(DEVICE_NAMES, weights=DEVICE_SHARES)[0],
                "locale": random.choice(LOCALES),
                "session_id": f"lt-{user}-{int(time.time()) // 1800}",  # a session per half hour
            }
            value = float(random.randint(1, 5)) if kind == "rating" else None
            events.append(_event(user, _popular_item(SETTINGS.items), kind, context, value))
        with self.client.post(
            f"{SETTINGS.collector_url}/v1/events",
            json={"events": events},
            headers=_headers(SETTINGS.collector_key),
            name="/v1/events [batch]",
            catch_response=True,
        ) as response:
            _check_accepted(response, len(events), "batch")

    @task(SETTINGS.item_weight)
    def post_items(self) -> None:
        # Off by default: these overwrite catalogue entries in the id range (with a "loadtest" category).
        items = [
            {
                "item_id": item_id(random.randrange(SETTINGS.items)),
                "category": "loadtest",
                "price": round(random.uniform(5, 500), 2),
                "title": "load test item",
                "attributes": {"source": "locust"},
            }
            for _ in range(20)
        ]
        with self.client.post(
            f"{SETTINGS.collector_url}/v1/items",
            json={"items": items},
            headers=_headers(SETTINGS.collector_key),
            name="/v1/items [batch]",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 202):
                response.failure(f"items: {_problem(response)}")
