"""Schemathesis over every service's OpenAPI, with keys and without, plus hand-made hostile input.

All five services run as processes (as ``scalerec serve`` runs them) with scoped API keys on the
shared real stack (Kafka, HBase, Memcached from ``scripts/stack/stack.sh up``), in a deployment
of their own.  For every operation of every service, Schemathesis generates requests from the
OpenAPI document (``MAX_EXAMPLES`` per operation, so the run stays a few minutes) and:

* no answer is a 5xx, with a key that may do everything;
* every 4xx has the project's error shape, and a 400/404/422 names the field at fault;
* every route but health answers 401 without a key (or with an unknown one) and 403 with a key of
  each other scope.

Then the hostile cases Schemathesis would not think of: row-key separators, NUL, bidi and
zero-width characters in ids, NaN and Infinity, a chunked body over the limit, far-future
timestamps; and every event answered 202 ends in HBase, none in a dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from scalerec_adapters.factory import make_bus, make_store
from scalerec_cli.cluster import SERVICES, LocalCluster
from scalerec_events.topics import Topic, dlq, topic_name
from scalerec_storage import records as r

from tests.integration.conftest import HBASE_THRIFT_PORT, HOST, KAFKA_PORT, MEMCACHED_PORTS, require_server

pytestmark = [pytest.mark.integration]

MAX_EXAMPLES = int(os.environ.get("SCALEREC_FUZZ_EXAMPLES", "25"))
ALL = "fz-all"
BY_SCOPE = {"ingest": "fz-ingest", "serve": "fz-serve", "erase": "fz-erase", "admin": "fz-admin"}
API_KEYS = ",".join([f"{ALL}:ingest+serve+erase+admin", *(f"{k}:{s}" for s, k in BY_SCOPE.items())])
# The scope each router requires, by its OpenAPI tag (one router per tag in every service).
TAG_SCOPE = {
    "events": "ingest",
    "items": "ingest",
    "privacy": "erase",
    "recommendations": "serve",
    "evaluation": "admin",
    "experiments": "admin",
    "status": "admin",
    "training": "admin",
}
NAMED_FIELD = {400, 404, 422}  # errors about the request's content: they say which field


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    require_server("Kafka", KAFKA_PORT, "SCALEREC_KAFKA_PORT")
    require_server("HBase Thrift", HBASE_THRIFT_PORT, "SCALEREC_HBASE_THRIFT_PORT")
    for port in MEMCACHED_PORTS:
        require_server("Memcached", port, "SCALEREC_MEMCACHED_PORTS")
    deployment = f"fuzz-{uuid.uuid4().hex[:8]}"
    cluster = LocalCluster(
        tmp_path_factory.mktemp("fuzz"),
        env={
            "BUS_URL": f"kafka://{HOST}:{KAFKA_PORT}",
            "STORE_URL": f"hbase://{HOST}:{HBASE_THRIFT_PORT}",
            "CACHE_URL": "memcached://" + ",".join(f"{HOST}:{p}" for p in MEMCACHED_PORTS),
            "DEPLOYMENT": deployment,
            "API_KEYS": API_KEYS,
            "AUTH": "enabled",
            "MODEL_SIZE": "demo",
            "WORKERS": "1",
            "TOPIC_PARTITIONS": "2",
            # The key checks send many requests without a key on purpose (the limit itself: tests/unit).
            "AUTH_FAILURES_PER_MINUTE": "100000",
        },
    )
    try:
        cluster.start_all(timeout=240)
        yield cluster, deployment
    finally:
        cluster.stop_all()


def _without_key(headers: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (headers or {}).items() if k.lower() not in ("x-api-key", "authorization")}


def assert_error_shape(response: Any, what: str) -> None:
    status = response.status_code
    assert status < 500, f"{what}: {status} {response.text[:500]}"
    if 400 <= status < 500:
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], f"{what}: {status} without a detail: {body}"
        if status in NAMED_FIELD:
            errors = body.get("errors")
            assert errors and all(e.get("field") for e in errors), f"{what}: {status} names no field: {body}"


def _check_keys(case: Any, base_url: str, scope: str, what: str) -> None:
    """401 without a valid key (none, unknown, unknown bearer); 403 with a key of every other scope."""
    base = _without_key(case.headers)
    for headers in (base, {**base, "X-API-Key": "not-a-key"}, {**base, "Authorization": "Bearer not-a-key"}):
        case.headers = headers
        resp = case.call(base_url=base_url, timeout=30)
        assert resp.status_code == 401, f"{what} without a valid key: {resp.status_code} {resp.text[:200]}"
        assert resp.json()["detail"]
    for other, key in BY_SCOPE.items():
        if other == scope:
            continue
        case.headers = {**base, "X-API-Key": key}
        resp = case.call(base_url=base_url, timeout=30)
        assert resp.status_code == 403, f"{what} with a {other!r} key: {resp.status_code} {resp.text[:200]}"
        assert scope in resp.json()["detail"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_with_and_without_keys(fuzz_cluster: tuple[LocalCluster, str], service: str) -> None:
    """Schemathesis' generators (valid and invalid requests for each operation of the OpenAPI
    document), driven from Hypothesis here: its pytest plugin does not run under pytest 9."""
    url = fuzz_cluster[0].url(service)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for op in operations:
        tags = op.definition.raw.get("tags") or ["health"]
        scope = None if tags[0] == "health" else TAG_SCOPE[tags[0]]
        _fuzz(op, url, f"{service}: {op.method.upper()} {op.path}", scope)


def _fuzz(op: Any, url: str, what: str, scope: str | None) -> None:
    keys_checked = scope is None
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],  # failures are reported as found, not shrunk
            database=None,
        )
        def run(case: Any) -> None:
            nonlocal keys_checked
            case.headers = {**_without_key(case.headers), "X-API-Key": ALL}
            assert_error_shape(case.call(base_url=url, timeout=30), what)
            if not keys_checked:  # the key checks come before anything else: one request says it all
                keys_checked = True
                assert scope is not None
                _check_keys(case, url, scope, what)

        try:
            run()
        except Unsatisfiable:
            # An operation with nothing to get wrong (no parameters, no body) has no invalid request.
            if mode is not schemathesis.GenerationMode.NEGATIVE:
                raise


# ----------------------------------------------------------------------------- hand-made hostile cases

HOSTILE_IDS = {
    "separator": "u|x",
    "nul": "u\x00x",
    "bidi": "u\u202ex",
    "zero-width": "u\u200bx",
    "newline": "u\nx",
    "too long": "u" * 129,
}


def _event(event_id: str, user_id: str, item_id: str = "i-fz-1", ts: datetime | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "item_id": item_id,
        "type": "view",
        "timestamp": (ts or datetime.now(UTC)).isoformat(),
    }


def test_hostile_input_is_refused_naming_the_field_and_every_accepted_event_is_stored(
    fuzz_cluster: tuple[LocalCluster, str],
) -> None:
    cluster, deployment = fuzz_cluster
    collector, ranker, preprocessor = (cluster.url(s) for s in ("collector", "ranker", "preprocessor"))
    run = uuid.uuid4().hex[:6]
    accepted: set[str] = set()
    users: set[str] = set()
    with httpx.Client(timeout=30, headers={"X-API-Key": ALL}) as client:

        def post_events(events: list[dict[str, Any]], content: bytes | None = None) -> httpx.Response:
            resp = client.post(
                f"{collector}/v1/events",
                content=content if content is not None else json.dumps({"events": events}).encode(),
                headers={"content-type": "application/json"},
            )
            assert_error_shape(resp, "POST /v1/events")
            if resp.status_code == 202:
                bad = {e["index"] for e in resp.json()["errors"]}
                for n, e in enumerate(events):
                    if n not in bad:
                        accepted.add(e["event_id"])
                        users.add(e["user_id"])
            return resp

        # Ids with a separator, NUL, bidi or zero-width character: 422 naming the field, the good
        # event of the same batch still accepted.
        for name, bad in HOSTILE_IDS.items():
            for field in ("event_id", "user_id", "item_id"):
                slug = name.replace(" ", "-")
                good = _event(f"e-{run}-{slug}-{field}-ok", f"u-{run}-ok")
                hostile = _event(f"e-{run}-{slug}-{field}", f"u-{run}-h", f"i-{run}")
                hostile[field] = bad
                resp = post_events([good, hostile])
                assert resp.status_code == 202, (name, field, resp.text)
                fields = {e["field"] for e in resp.json()["errors"]}
                assert fields == {f"events[1].{field}"}, (name, field, resp.json())
            # ... and in path and query ids.
            path_id = quote(bad, safe="")
            for resp in (
                client.get(f"{ranker}/v1/recommendations", params={"user_id": bad}),
                client.get(f"{ranker}/v1/recommendations", params={"user_id": "u1", "exclude": [bad]}),
                client.delete(f"{collector}/v1/users/{path_id}"),
                client.get(f"{preprocessor}/v1/users/{path_id}/history"),
            ):
                assert_error_shape(resp, str(resp.request.url))
                assert resp.status_code in (404, 422), (name, resp.request.url, resp.text)

        # NaN and Infinity (Python's json reads them), anywhere: 422 naming the field.
        for literal in ("NaN", "Infinity", "-Infinity"):
            raw = (
                '{"events": ['
                + json.dumps(_event(f"e-{run}-{literal}", f"u-{run}-n"))[:-1]
                + f', "value": {literal}}}]}}'
            )
            resp = post_events([], raw.encode())
            assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "events[0].value", resp.text
            item = '{"items": [{"item_id": "i-nan", "title": "t", "category": "c", "price": ' + literal + "}]}"
            resp = client.post(f"{collector}/v1/items", content=item, headers={"content-type": "application/json"})
            assert_error_shape(resp, "POST /v1/items")
            assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "items[0].price", resp.text

        # Far-future timestamps: refused, naming the field; a little skew is fine.
        far = _event(f"e-{run}-far", f"u-{run}-t", ts=datetime.now(UTC) + timedelta(days=3650))
        resp = post_events([far])
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "events[0].timestamp"
        resp = post_events([_event(f"e-{run}-skew", f"u-{run}-t", ts=datetime.now(UTC) + timedelta(minutes=2))])
        assert resp.status_code == 202 and resp.json()["accepted"] == 1

        # A chunked body (no Content-Length) over the limit: 413, nothing accepted.
        def chunks() -> Iterator[bytes]:
            yield b'{"events": ['
            one = json.dumps(_event(f"e-{run}-big", f"u-{run}-big")).encode()
            for _ in range(5 * 1024 * 1024 // len(one) + 1):
                yield one + b","
            yield one + b"]}"

        resp = client.post(f"{collector}/v1/events", content=chunks(), headers={"content-type": "application/json"})
        assert resp.status_code == 413 and "over the limit" in resp.json()["detail"], resp.text[:300]
        assert "content-length" not in resp.request.headers

        # Plenty of ordinary events, in batches, next to all of the above.
        for b in range(5):
            batch = [_event(f"e-{run}-{b}-{n}", f"u-{run}-{n % 7}", f"i-{run}-{n % 11}") for n in range(40)]
            assert post_events(batch).status_code == 202

    # Every event answered 202 ends in HBase; nothing reached a dead-letter topic.
    assert len(accepted) > 200
    store = make_store(f"hbase://{HOST}:{HBASE_THRIFT_PORT}", namespace=deployment)
    try:

        def stored() -> set[str]:
            out: set[str] = set()
            for u in users:
                out |= {h.event_id for h in r.recent_history(store, u, 10_000)}
            return out

        deadline = time.monotonic() + 120
        while not accepted <= (found := stored()):
            assert time.monotonic() < deadline, f"{len(accepted - found)} accepted events never stored"
            time.sleep(1.0)
        assert found == accepted, f"events stored that were never accepted: {sorted(found - accepted)[:5]}"
    finally:
        store.close()
    assert asyncio.run(_dead_letters(deployment)) == [], "messages reached a dead-letter topic"


async def _dead_letters(deployment: str) -> list[tuple[str, bytes]]:
    bus = make_bus(f"kafka://{HOST}:{KAFKA_PORT}")
    await bus.start()
    try:
        topics = [dlq(topic_name(t, deployment)) for t in (Topic.EVENTS_RAW, Topic.ITEMS, Topic.ERASURE)]
        consumer = await bus.consumer(topics, f"{deployment}.fuzz-dlq-check")
        try:
            found: list[tuple[str, bytes]] = []
            for _ in range(3):
                found += [(m.topic, m.value[:200]) for m in await consumer.getmany(timeout_ms=2000)]
            return found
        finally:
            await consumer.stop()
    finally:
        await bus.close()


def test_the_openapi_documents_declare_the_api_key_scheme(fuzz_cluster: tuple[LocalCluster, str]) -> None:
    cluster, _ = fuzz_cluster
    for service in SERVICES:
        doc = httpx.get(f"{cluster.url(service)}/openapi.json", timeout=10).json()
        schemes = doc["components"]["securitySchemes"]
        assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
            s for s in schemes.values() if s["type"] == "apiKey"
        ).items(), service
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                # Open by design, like the probes: Prometheus carries no key (docs/observability.md).
                if path in ("/healthz", "/readyz", "/metrics"):
                    assert not op.get("security"), (service, path)
                else:
                    assert op.get("security"), f"{service}: {method.upper()} {path} declares no security"
