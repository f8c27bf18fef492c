"""Closed by default: scoped keys, 401 without a key, 403 with the wrong scope, nothing starts without keys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from scalerec_collector.config import CollectorSettings
from scalerec_collector.main import create_app as collector_app
from scalerec_core.auth import ALL_SCOPES, KeyRing, Scope
from scalerec_preprocessor.config import PreprocessorSettings
from scalerec_preprocessor.main import create_app as preprocessor_app


def test_key_ring_parses_scopes_and_verifies_keys() -> None:
    ring = KeyRing.parse(" app:ingest+serve , ops:admin+erase, all ")
    assert len(ring) == 3
    app = ring.verify("app")
    assert app is not None and app.scopes == {Scope.INGEST, Scope.SERVE}
    assert ring.verify("all").scopes == ALL_SCOPES  # type: ignore[union-attr]
    assert ring.verify("ap") is None and ring.verify("") is None and ring.verify(None) is None
    assert "app" not in app.key_id  # callers are named by a digest, never by the key
    with pytest.raises(ValueError, match="unknown scope"):
        KeyRing.parse("k:ingest+root")


@pytest.mark.parametrize("make", [collector_app, preprocessor_app])
def test_a_service_without_keys_refuses_to_start(tmp_path: Path, make: object) -> None:
    settings_cls = CollectorSettings if make is collector_app else PreprocessorSettings
    with pytest.raises(ValueError, match="no API_KEYS configured"):
        make(settings_cls(data_dir=tmp_path))  # type: ignore[operator]
    make(settings_cls(data_dir=tmp_path, auth="disabled"))  # type: ignore[operator]  # told to run open


def test_routes_need_a_key_with_their_scope(tmp_path: Path) -> None:
    settings = CollectorSettings(data_dir=tmp_path, api_keys="serve-only:serve,ingest:ingest,eraser:erase")
    event = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "type": "view",
        "timestamp": "2026-11-27T10:00:00Z",
    }
    with TestClient(collector_app(settings)) as c:
        assert c.get("/healthz").status_code == 200  # health stays open
        assert c.get("/healthz/../v1/events").status_code in (401, 404, 405)  # matched exactly, not by prefix
        assert c.get("/healthz-debug").status_code == 401 and c.get("/readyzz").status_code == 401
        r = c.post("/v1/events", json={"events": [event]})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/v1/events", json={"events": [event]}, headers={"X-API-Key": "serve-only"})
        assert r.status_code == 403 and "'ingest' scope" in r.json()["detail"]
        r = c.post("/v1/events", json={"events": [event]}, headers={"Authorization": "Bearer ingest"})
        assert r.status_code == 202, r.text
        assert c.delete("/v1/users/u1", headers={"X-API-Key": "ingest"}).status_code == 403
        assert c.delete("/v1/users/u1", headers={"X-API-Key": "eraser"}).status_code == 202
        schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} >= {"apiKey", "http"}  # /docs shows Authorize


def test_failed_authentications_are_limited_by_default_with_retry_after(tmp_path: Path) -> None:
    """Key guessing is throttled even where requests are not (RATE_LIMIT_PER_SECOND=0, the default);
    a caller with the right key is not held back by someone else's failures from another address."""
    settings = CollectorSettings(data_dir=tmp_path, api_keys="k:ingest", auth_failures_per_minute=5)
    assert settings.rate_limit_per_second == 0
    with TestClient(collector_app(settings)) as c:
        codes = [c.get("/v1/nothing", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
        r = c.get("/v1/nothing", headers={"X-API-Key": "guess"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "failed authentications" in r.json()["detail"]


def test_readiness_checks_run_at_most_once_per_cache_period(tmp_path: Path) -> None:
    """Probes every second from every kubelet must not open a Kafka admin connection each."""
    from fastapi import FastAPI
    from scalerec_core.http import READY_CACHE_S, install_common

    calls = {"n": 0}

    async def check() -> bool:
        calls["n"] += 1
        return True

    app = FastAPI()
    install_common(app, CollectorSettings(data_dir=tmp_path, auth="disabled"), service="t", readiness={"bus": check})
    with TestClient(app) as c:
        for _ in range(20):
            assert c.get("/readyz").json() == {"status": "ready", "checks": {"bus": True}}
        assert calls["n"] == 1
        time.sleep(READY_CACHE_S + 0.1)
        assert c.get("/readyz").status_code == 200 and calls["n"] == 2


def test_readiness_checks_run_side_by_side(tmp_path: Path) -> None:
    """/readyz answers within one check's timeout, under the probe's: each check here waits for the other
    to have started, which only happens when they run at the same time (one after the other, the first
    would time out and report its dependency down)."""
    import asyncio

    from fastapi import FastAPI
    from scalerec_core.http import install_common

    started: dict[str, asyncio.Event] = {}

    def waits_for(other: str, me: str):  # type: ignore[no-untyped-def]
        async def check() -> bool:
            started.setdefault(me, asyncio.Event()).set()
            await started.setdefault(other, asyncio.Event()).wait()
            return True

        return check

    app = FastAPI()
    checks = {"bus": waits_for("store", "bus"), "store": waits_for("bus", "store")}
    install_common(app, CollectorSettings(data_dir=tmp_path, auth="disabled"), service="t", readiness=checks)
    with TestClient(app) as c:
        assert c.get("/readyz").json() == {"status": "ready", "checks": {"bus": True, "store": True}}


def test_openapi_documents_a_key_on_every_guarded_path_and_routes_solve_nothing_for_it(tmp_path: Path) -> None:
    """The schemes come from the guard's one list of open paths; ``require`` reads what the guard verified,
    so a request solves no header or bearer dependency for it (it runs on every request)."""
    from fastapi.routing import APIRoute
    from scalerec_ranker.api.routes.recommendations import router
    from scalerec_ranker.config import RankerSettings
    from scalerec_ranker.main import create_app as ranker_app

    app = ranker_app(RankerSettings(data_dir=tmp_path, auth="disabled"))
    doc = app.openapi()
    assert set(doc["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}
    for path, operations in doc["paths"].items():
        for op in operations.values():
            expected = (
                None if path in ("/healthz", "/readyz", "/metrics") else [{"APIKeyHeader": []}, {"HTTPBearer": []}]
            )
            assert op.get("security") == expected, path
    route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/v1/recommendations")
    guard = route.dependant.dependencies[0]  # the router's require(Scope.SERVE)
    assert guard.dependencies == []


def test_openapi_documents_the_error_shape_the_services_send(tmp_path: Path) -> None:
    """FastAPI documented a 422 in its own ``HTTPValidationError`` shape, which no service sends, and none of
    the guard's 401/403/429 or a body's 400/413/415. Every service's document now names the one shape, and
    real answers validate against it."""
    import importlib

    import jsonschema
    from scalerec_core.http import _OPEN_PATHS

    for service in ("collector", "preprocessor", "trainer", "ranker", "evaluator"):
        config = importlib.import_module(f"scalerec_{service}.config")
        settings_cls = getattr(config, f"{service.title()}Settings")
        app = importlib.import_module(f"scalerec_{service}.main").create_app(
            settings_cls(data_dir=tmp_path / service, auth="disabled")
        )
        doc = app.openapi()
        assert "HTTPValidationError" not in doc["components"]["schemas"], service
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                responses = op["responses"]
                expected = set() if path in _OPEN_PATHS else {"401", "403", "429"}
                if "requestBody" in op:
                    expected |= {"400", "413", "415", "422"}
                assert expected <= set(responses), (service, method, path, sorted(responses))
                for status, answer in responses.items():
                    if status >= "400":
                        schema = answer["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/Error"}, (service, path, status)
        if service == "trainer":  # reads its body itself (none is taken): the 422 it sends is documented too
            assert "422" in doc["paths"]["/v1/train"]["post"]["responses"]

    from scalerec_ranker.config import RankerSettings
    from scalerec_ranker.main import create_app as ranker_app

    app = ranker_app(RankerSettings(data_dir=tmp_path / "keys", api_keys="k:ingest,s:serve"))
    doc = app.openapi()
    schemas = doc["components"]["schemas"]
    field = json.dumps({"$ref": "#/components/schemas/FieldError"})
    error = json.loads(json.dumps(schemas["Error"]).replace(field, json.dumps(schemas["FieldError"])))
    with TestClient(app) as c:
        answers = [
            c.get("/v1/recommendations", params={"user_id": "u1"}),  # 401
            c.get("/v1/recommendations", params={"user_id": "u1"}, headers={"X-API-Key": "k"}),  # 403
            c.post("/v1/recommendations", content=b"{", headers={"X-API-Key": "s", "content-type": "application/json"}),
            c.post("/v1/recommendations", json={"user_id": "u1", "k": 0}, headers={"X-API-Key": "s"}),  # 422
        ]
    assert [a.status_code for a in answers] == [401, 403, 400, 422]
    for answer in answers:
        jsonschema.validate(answer.json(), error)


class _Share(BaseModel):
    share: float


def test_a_model_body_sent_without_a_json_content_type_is_a_415_naming_it(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from scalerec_core.http import install_common

    app = FastAPI()
    install_common(app, CollectorSettings(data_dir=tmp_path, auth="disabled"), service="t")

    @app.post("/things")
    async def things(body: _Share) -> float:
        return body.share

    with TestClient(app) as c:
        r = c.post("/things", content=b'{"share": 0.5}', headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "'text/plain'" in r.json()["detail"], r.text
        assert c.post("/things", content=b'{"share": 0.5}', headers={"content-type": "application/json"}).json() == 0.5
        r = c.post("/things", content=b'{"share": "x"}', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "share" in r.text  # a JSON body of the wrong shape stays a 422


def test_a_request_with_more_than_one_key_is_refused(tmp_path: Path) -> None:
    """Which of two keys counts could differ between a proxy that reads the first and this service:
    neither counts. One key sent both ways, or a proxy's own Basic credentials beside the key, is fine."""
    settings = CollectorSettings(data_dir=tmp_path, api_keys="k1:admin,k2:serve")
    with TestClient(collector_app(settings)) as c:
        for headers in (
            [("X-API-Key", "nope"), ("X-API-Key", "k1")],
            [("X-API-Key", "k1"), ("X-API-Key", "nope")],
            [("X-API-Key", "k2"), ("Authorization", "Bearer k1")],
            [("Authorization", "Bearer k1"), ("Authorization", "Bearer k2")],
        ):
            r = c.get("/v1/nothing", headers=headers)
            assert r.status_code == 401 and "more than one API key" in r.json()["detail"], (headers, r.text)
        # Let in (then 404: the collector has no such route) when the one key is clear.
        for headers in (
            [("X-API-Key", "k1"), ("Authorization", "Bearer k1")],
            [("X-API-Key", "k1"), ("Authorization", "Basic Zm9vOmJhcg==")],
            [("Authorization", "Bearer k1")],
        ):
            assert c.get("/v1/nothing", headers=headers).status_code == 404, headers


def test_an_unknown_route_or_method_and_an_unreadable_body_say_what_is_wrong(tmp_path: Path) -> None:
    """404 and 405 came as {"detail": "Not Found"} without `errors`; a body that is JSON but not readable
    (an integer of 5,000 digits, nesting of 2,000 levels) was "could not be read ... send a JSON object"."""
    from scalerec_collector.config import CollectorSettings

    with TestClient(collector_app(CollectorSettings(data_dir=tmp_path, api_keys="k"))) as c:
        keyed = {"X-API-Key": "k", "content-type": "application/json"}
        missing = c.get("/v1/nothing-here", headers=keyed)
        wrong = c.get("/v1/events", headers=keyed)
        digits = c.post("/v1/events", content=b'{"events": [' + b"9" * 5000 + b"]}", headers=keyed)
        deep = c.post("/v1/events", content=b"[" * 2000 + b"]" * 2000, headers=keyed)
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "path", missing.text
    assert "/v1/nothing-here" in missing.json()["detail"]
    assert wrong.status_code == 405 and wrong.json()["errors"][0]["field"] == "method", wrong.text
    assert "allowed: POST" in wrong.json()["detail"]
    for answer in (digits, deep):
        assert answer.status_code == 400, answer.text
        assert "4,300 digits" in answer.json()["detail"] and answer.json()["errors"][0]["field"] == "body"


def test_a_compressed_body_is_a_415_naming_its_encoding(tmp_path: Path) -> None:
    """No service decodes compressed bodies: gzip was a 400 "could not be read", and a plain body labelled gzip
    was taken as it was."""
    import gzip

    from scalerec_collector.config import CollectorSettings

    event = b'{"events": [{"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "timestamp": "2026-05-01T12:00:00Z"}]}'
    with TestClient(collector_app(CollectorSettings(data_dir=tmp_path, api_keys="k"))) as c:
        keyed = {"X-API-Key": "k", "content-type": "application/json"}
        zipped = c.post("/v1/events", content=gzip.compress(event), headers={**keyed, "content-encoding": "gzip"})
        labelled = c.post("/v1/events", content=event, headers={**keyed, "content-encoding": "gzip"})
        plain = c.post("/v1/events", content=event, headers={**keyed, "content-encoding": "identity"})
    for answer in (zipped, labelled):
        assert answer.status_code == 415, answer.text
        assert answer.json()["detail"] == "Content-Encoding 'gzip' is not supported: send the body uncompressed"
    assert plain.status_code == 202, plain.text
