"""Collector over HTTP (in process) with the embedded bus: what a client sees, and what lands on the bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from scalerec_collector.config import CollectorSettings
from scalerec_collector.main import create_app
from scalerec_events.models import ID_MAX_LENGTH, ID_PATTERN, EventType
from scalerec_events.topics import Topic, topic_name

from tests.unit.services.bench import run_benchmark


def _event(i: int, **over: object) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "user_id": f"u{i % 3}",
        "item_id": f"i{i}",
        "type": "click",
        "timestamp": "2026-05-01T12:00:00Z",
        **over,
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = CollectorSettings(data_dir=tmp_path, max_batch_events=10, max_body_bytes=64 * 1024, api_keys="k1,k2")
    with TestClient(create_app(settings), headers={"X-API-Key": "k1"}) as c:
        yield c


def _bus_count(client: TestClient, topic: str) -> int:
    import asyncio

    ends = asyncio.run(client.app.state.bus.end_offsets(topic))  # type: ignore[attr-defined]
    return sum(ends.values())


def test_accepts_a_batch_and_puts_every_event_on_the_bus(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [_event(i) for i in range(5)]})
    assert r.status_code == 202
    assert r.json() == {"accepted": 5, "duplicates": 0, "rejected": 0, "errors": []}
    assert _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 5


def test_a_resent_event_id_is_acknowledged_but_not_sent_twice(client: TestClient) -> None:
    client.post("/v1/events", json={"events": [_event(1), _event(2)]})
    r = client.post("/v1/events", json={"events": [_event(1), _event(2), _event(3), _event(3)]})
    assert r.json()["accepted"] == 1 and r.json()["duplicates"] == 3
    assert _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 3


def test_each_invalid_event_is_named_and_the_rest_accepted(client: TestClient) -> None:
    events = [_event(1), _event(2, type="teleport"), _event(3, timestamp="2999-01-01T00:00:00Z"), _event(4, value="x")]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 3
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"events[1].type", "events[2].timestamp", "events[3].value"}
    assert any("future" in e["message"] for e in body["errors"])


def test_a_rating_without_value_is_rejected(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [_event(1, type="rating")]})
    assert r.status_code == 422
    assert "rating" in r.text


def test_malformed_json_is_a_400(client: TestClient) -> None:
    r = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413_not_400(client: TestClient) -> None:
    """Found by tests/e2e/test_api_fuzz.py: with no Content-Length the limit was raised from inside
    receive(), FastAPI's body parsing caught it and answered 400 "error parsing the body"."""

    def chunks() -> Iterator[bytes]:
        yield b'{"events": ["'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"]}'

    r = client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "over the limit" in r.json()["detail"], r.text


def test_a_body_that_cannot_be_parsed_is_a_400_naming_the_body(client: TestClient) -> None:
    """Found by tests/e2e/test_api_fuzz.py: a JSON body that is not UTF-8 got FastAPI's bare "There
    was an error parsing the body", naming no field and not saying what to send."""
    r = client.post("/v1/events", content=b'{"events": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["errors"] == [{"field": "body", "message": body["detail"]}]
    assert "could not be read" in body["detail"] and "application/json" in body["detail"]


def test_oversize_batch_and_body_are_413(client: TestClient) -> None:
    assert client.post("/v1/events", json={"events": [_event(i) for i in range(11)]}).status_code == 413
    r = client.post(
        "/v1/events", content=b'{"events":["' + b"x" * 70_000 + b'"]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_api_key_is_required(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [_event(1)]}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    r = client.post("/v1/events", json={"events": [_event(1)]}, headers={"X-API-Key": "", "Authorization": "Bearer k2"})
    assert r.status_code == 202
    assert client.get("/healthz", headers={"X-API-Key": ""}).status_code == 200


def test_items_and_erasure_go_on_their_own_topics(client: TestClient) -> None:
    r = client.post(
        "/v1/items",
        json={"items": [{"item_id": "i1", "category": "shoes", "price": 10.0}, {"item_id": "i2", "price": -1}]},
    )
    assert r.status_code == 202 and r.json()["accepted"] == 1 and r.json()["errors"][0]["field"] == "items[1].price"
    r = client.delete("/v1/users/u1")
    assert r.status_code == 202 and r.json()["user_id"] == "u1"
    assert _bus_count(client, topic_name(Topic.ITEMS)) == 1
    assert _bus_count(client, topic_name(Topic.ERASURE)) == 1


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/events", "/v1/items", "/v1/users/{user_id}"} <= set(paths)


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize(
    "path, key, model, fields",
    [
        ("/v1/events", "events", "Event", {"event_id", "user_id", "item_id", "type", "timestamp", "value", "context"}),
        ("/v1/items", "items", "Item", {"item_id", "category", "price", "title", "text", "attributes", "created_at"}),
    ],
)
def test_openapi_shows_the_request_body_a_producer_writes(
    client: TestClient, path: str, key: str, model: str, fields: set[str]
) -> None:
    """/docs and /openapi.json carry the wire schema of each element (a producer in another language is written
    from it): the body is an object with a required non-empty list of the scalerec_events model."""
    spec = client.get("/openapi.json").json()
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    media = body["content"]["application/json"]
    batch = _resolve(spec, media["schema"])
    assert batch["required"] == [key] and batch["properties"][key]["minItems"] == 1
    element = batch["properties"][key]["items"]
    assert element == {"$ref": f"#/components/schemas/{model}"}
    schema = _resolve(spec, element)
    assert fields <= set(schema["properties"]), schema["properties"].keys()
    assert {key[:-1] + "_id"} <= set(schema["required"])
    assert media["examples"], "the example stays next to the schema"
    if model == "Event":
        assert _resolve(spec, schema["properties"]["type"])["enum"] == [t.value for t in EventType]
        assert "Context" in spec["components"]["schemas"]
    erase = spec["paths"]["/v1/users/{user_id}"]["delete"]
    assert "requestBody" not in erase  # the user id is the path, checked against the id rules
    (param,) = erase["parameters"]
    assert param["schema"]["pattern"] == ID_PATTERN and param["schema"]["maxLength"] == ID_MAX_LENGTH
    assert erase["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErasureAccepted")


@pytest.mark.parametrize(
    "body, field",
    [
        ([{"event_id": "e1"}], "body"),  # not an object
        ({"event": []}, "body"),  # no events list
        ({"events": {"e1": 1}}, "events"),  # not a list
        ({"events": []}, "events"),  # empty
    ],
)
def test_a_batch_of_the_wrong_shape_is_a_422_naming_the_field(client: TestClient, body: object, field: str) -> None:
    r = client.post("/v1/events", json=body)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 0


@pytest.mark.parametrize(("path", "key"), [("/v1/events", "events"), ("/v1/items", "items")])
def test_unknown_fields_beside_the_batch_are_a_422_naming_them(client: TestClient, path: str, key: str) -> None:
    """An option the API does not have (or a misspelt one) is refused, not ignored while the batch is accepted."""
    r = client.post(path, json={key: [{"anything": 1}], "dry_run": True, f"{key[:-1]}s_": []})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == f"unknown field(s) 'dry_run', '{key[:-1]}s_': the body has only '{key}'"
    assert [e["field"] for e in r.json()["errors"]] == ["dry_run"]
    assert _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 0
    assert client.app.openapi()["components"]["schemas"][f"{key.title()[:-1]}Batch"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "field, value",
    [
        ("user_id", "u1|u2"),  # the row-key separator
        ("user_id", "u1\x00"),  # NUL
        ("item_id", "i\u202e1"),  # right-to-left override
        ("event_id", "e\u200b1"),  # zero-width space
        ("user_id", "e\u0301"),  # a combining accent: NFC would change it
        ("item_id", " i1"),  # whitespace
        ("user_id", "u" * 129),  # too long
        ("user_id", ".."),  # a path resolves it away: DELETE /v1/users/.. reached /v1/ (never erasable)
        ("item_id", "."),
    ],
)
def test_hostile_identifiers_are_rejected_naming_the_field(client: TestClient, field: str, value: str) -> None:
    r = client.post("/v1/events", json={"events": [_event(1), _event(2, **{field: value})]})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    assert body["errors"][0]["field"] == f"events[1].{field}"


def test_a_deployment_publishes_to_its_own_topics(tmp_path: Path) -> None:
    settings = CollectorSettings(data_dir=tmp_path, deployment="prod", api_keys="k1")
    with TestClient(create_app(settings), headers={"X-API-Key": "k1"}) as c:
        assert c.post("/v1/events", json={"events": [_event(1), _event(2)]}).status_code == 202
        assert c.post("/v1/items", json={"items": [{"item_id": "i1"}]}).status_code == 202
        assert c.delete("/v1/users/u1").status_code == 202
        assert _bus_count(c, "prod.events.raw.v1") == 2
        assert _bus_count(c, "prod.items.upsert.v1") == 1
        assert _bus_count(c, "prod.users.erasure.v1") == 1
        assert _bus_count(c, topic_name(Topic.EVENTS_RAW)) == 0


def _item(i: int, **over: object) -> dict[str, object]:
    return {"item_id": f"i{i}", "category": "shoes", "title": f"item {i}", **over}


def _raw_post(client: TestClient, path: str, body: str) -> dict[str, object]:
    # NaN and Infinity are not JSON, but Python's parser (and many clients) accept the tokens.
    r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def test_nan_and_infinity_are_refused_anywhere_in_a_payload_naming_the_field(client: TestClient) -> None:
    good = '{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","timestamp":"2026-05-01T12:00:00Z"}'
    nan = good.replace('"type":"click"', '"type":"rating","value":NaN').replace("e1", "e2")
    body = _raw_post(client, "/v1/events", '{"events":[' + good + "," + nan + "]}")
    assert body["accepted"] == 1 and [e["field"] for e in body["errors"]] == ["events[1].value"]  # type: ignore[index]
    items = (
        '{"items":[{"item_id":"i1"},{"item_id":"i2","attributes":{"weight":Infinity}},'
        '{"item_id":"i3","attributes":{"w":-Infinity}},{"item_id":"i4","price":NaN}]}'
    )
    body = _raw_post(client, "/v1/items", items)
    assert body["accepted"] == 1 and body["rejected"] == 3
    errors = body["errors"]
    assert [e["field"] for e in errors] == ["items[1].attributes", "items[2].attributes", "items[3].price"]  # type: ignore[union-attr,index]
    assert "'weight'" in errors[0]["message"] and "finite" in errors[0]["message"]  # type: ignore[index]


def test_an_element_with_thousands_of_fields_is_one_error_not_thousands(client: TestClient) -> None:
    """An event of 400,000 unknown fields (3.9 MB) was 400,000 errors: 4.5 s of the event loop (/healthz waited)
    and a 42 MB answer. An object over MAX_OBJECT_FIELDS is refused as a whole, and an element lists at most
    20 errors."""
    from scalerec_collector.api.ingest import MAX_OBJECT_FIELDS

    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "timestamp": "2026-05-01T12:00:00Z"}
    crowded = {**good, "event_id": "e2", **{f"x{n}": 0 for n in range(3000)}}
    nested = {**good, "event_id": "e3", "context": {f"x{n}": 0 for n in range(3000)}}
    many = {**good, "event_id": "e4", **{f"x{n}": 0 for n in range(200)}}  # under the cap: errors listed, capped
    r = client.post("/v1/events", json={"events": [good, crowded, nested, many]})
    assert r.status_code == 202 and len(r.content) < 6000, (r.status_code, len(r.content))
    body = r.json()
    assert body["accepted"] == 1
    by_index: dict[int, list[dict[str, object]]] = {}
    for e in body["errors"]:
        by_index.setdefault(e["index"], []).append(e)
    assert [(e["field"], e["message"]) for e in by_index[1]] == [
        ("events[1]", f"an object of 3005 fields: at most {MAX_OBJECT_FIELDS}")
    ]
    assert [e["field"] for e in by_index[2]] == ["events[2].context"]
    assert len(by_index[3]) == 21 and by_index[3][-1]["message"] == "and 180 more errors (not listed)"


def test_attribute_strings_and_maps_are_capped_naming_the_field(client: TestClient) -> None:
    from scalerec_events.models import ATTRIBUTE_VALUE_MAX_LENGTH, ATTRIBUTES_MAX_CHARS

    big_map = {f"k{n}": "v" * 500 for n in range(ATTRIBUTES_MAX_CHARS // 500 + 1)}
    r = client.post(
        "/v1/items",
        json={
            "items": [
                _item(1),
                _item(2, attributes={"brand": "x" * (ATTRIBUTE_VALUE_MAX_LENGTH + 1)}),
                _item(3, attributes=big_map),
                _item(4, attributes={f"k{n}": n for n in range(65)}),
            ]
        },
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 3
    by_index = {e["index"]: e for e in body["errors"]}
    assert by_index[1]["field"] == "items[1].attributes" and "'brand'" in by_index[1]["message"]
    assert by_index[2]["field"] == "items[2].attributes" and "characters" in by_index[2]["message"]
    assert by_index[3]["field"] == "items[3].attributes" and "65 attributes" in by_index[3]["message"]


def test_created_at_far_in_the_future_is_refused(client: TestClient) -> None:
    r = client.post("/v1/items", json={"items": [_item(1), _item(2, created_at="2999-01-01T00:00:00Z")]})
    body = r.json()
    assert body["accepted"] == 1 and body["errors"][0]["field"] == "items[1].created_at"
    assert "future" in body["errors"][0]["message"]


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_with_no_utc_value_is_refused_naming_the_field(client: TestClient, when: str) -> None:
    """Hours from year 1 or 9999 with an offset cannot be put in UTC: a 422 for that element (it was a 500
    that refused the whole batch and dropped the connection), the rest accepted."""
    r = client.post("/v1/events", json={"events": [_event(1), _event(2, timestamp=when)]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and [e["field"] for e in body["errors"]] == ["events[1].timestamp"]
    assert "out of range in UTC" in body["errors"][0]["message"]
    r = client.post("/v1/items", json={"items": [_item(1), _item(2, created_at=when)]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and [e["field"] for e in body["errors"]] == ["items[1].created_at"]
    r = client.post("/v1/events", json={"events": [_event(3, timestamp=when)]})
    assert r.status_code == 422 and "events[0].timestamp" in r.text


def test_an_item_too_large_for_the_bus_gets_413_for_that_element_and_nothing_half_accepted(tmp_path: Path) -> None:
    settings = CollectorSettings(data_dir=tmp_path, max_message_bytes=4096, auth="disabled")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/items", json={"items": [_item(1), _item(2, text="t" * 4000), _item(3)]})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == 2 and body["rejected"] == 1
        assert body["errors"][0] | {"message": ""} == {
            "index": 1,
            "id": "i2",
            "field": "items[1]",
            "message": "",
            "status": 413,
        }
        assert _bus_count(c, topic_name(Topic.ITEMS)) == 2
        alone = c.post("/v1/items", json={"items": [_item(4, text="t" * 4000)]})
        assert alone.status_code == 413 and "items[0]" in alone.text
        assert _bus_count(c, topic_name(Topic.ITEMS)) == 2


@pytest.mark.parametrize("user_id", ["u1%7Cu2", "u1%00", "%E2%80%AEu1", "u" * 129])
def test_erasure_path_ids_follow_the_id_rules(client: TestClient, user_id: str) -> None:
    r = client.delete(f"/v1/users/{user_id}")
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "user_id"
    assert _bus_count(client, topic_name(Topic.ERASURE)) == 0


def test_the_collector_benchmark_runs_and_reports() -> None:
    """A few-second smoke run of benchmarks/collector_throughput.py: both rows and the ratio, not the figures."""
    stdout = run_benchmark("collector_throughput.py", "--events", "300", "--batch", "100", "--rounds", "1")
    assert "| floor:" in stdout and "| collector:" in stdout
    ratio = float(stdout.rsplit("ratio floor / collector (1.0 = free):", 1)[1].split()[0])
    assert 0 < ratio <= 2, stdout


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_json_body_sent_as_another_type_is_a_415_saying_so(client: TestClient, content_type: str | None) -> None:
    body = json.dumps({"events": [_event(1)]}).encode()
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/events", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in r.json()["detail"]
    assert (
        client.post("/v1/events", content=body, headers={"content-type": "application/json; charset=utf-8"}).status_code
        == 202
    )


def _slowed(client: TestClient, fail_first: bool = False) -> list[int]:
    """The bus producer made slow (so that concurrent requests overlap), the first append failing if asked;
    returns the sizes of the batches appended."""
    producer = client.app.state.producer  # type: ignore[attr-defined]
    send_batch = producer.send_batch
    sent: list[int] = []

    async def slow(topic: str, messages: Any) -> Any:
        await asyncio.sleep(0.2)
        if fail_first and not sent:
            sent.append(0)
            raise ConnectionError("the bus is away")
        sent.append(len(messages))
        return await send_batch(topic, messages)

    producer.send_batch = slow
    return sent


async def _post_concurrently(client: TestClient, body: dict[str, Any], n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=client.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers={"X-API-Key": "k1"}) as http:
        return await asyncio.gather(*(http.post("/v1/events", json=body) for _ in range(n)))


def test_the_same_batch_sent_concurrently_is_accepted_and_published_once(client: TestClient) -> None:
    """A client that retries before its first try was answered: one request publishes, the others wait for
    it and report duplicates, so the bus gets each event once and the answers add up to the batch."""
    sent = _slowed(client)
    body = {"events": [_event(i) for i in range(8)]}
    answers = client.portal.call(_post_concurrently, client, body, 10)  # type: ignore[union-attr]
    assert all(a.status_code == 202 for a in answers)
    assert sum(a.json()["accepted"] for a in answers) == 8
    assert sum(a.json()["duplicates"] for a in answers) == 72
    assert sent == [8] and _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 8


def test_concurrent_copies_are_refused_with_the_one_the_bus_refused_and_the_retry_goes_through(
    client: TestClient,
) -> None:
    """Waiting copies fail with the copy being published (503 at the same moment, not one bus timeout
    after another); nothing was stored, so the client's retry is accepted in full."""
    sent = _slowed(client, fail_first=True)
    body = {"events": [_event(i) for i in range(8)]}
    answers = client.portal.call(_post_concurrently, client, body, 3)  # type: ignore[union-attr]
    assert [a.status_code for a in answers] == [503, 503, 503], [a.text for a in answers]
    assert sent == [0] and _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 0
    (retry,) = client.portal.call(_post_concurrently, client, body, 1)  # type: ignore[union-attr]
    assert retry.status_code == 202 and retry.json()["accepted"] == 8
    assert sent == [0, 8] and _bus_count(client, topic_name(Topic.EVENTS_RAW)) == 8
