"""The whole pipeline over HTTP: exactly-once storage, a promoted model that beats popularity, fallbacks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from scalerec_adapters.factory import make_store
from scalerec_cli import driver
from scalerec_storage import records as r

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def _store(p: Pipeline):  # type: ignore[no-untyped-def]
    return make_store(f"sqlite:///{p.cluster.data_dir / 'store.db'}", namespace="scalerec")


def test_every_accepted_event_is_stored_exactly_once(pipeline: Pipeline) -> None:
    assert pipeline.ingested["accepted"] == len(pipeline.shop.events)
    assert pipeline.stored_after_ingest == pipeline.ingested["accepted"]
    store = _store(pipeline)
    try:
        before = r.count_interactions(store)
        # A client that re-sends a batch it did not see acknowledged must not double anything, even when
        # the collector restarted in between and forgot the ids it had seen (the store dedupes for real).
        pipeline.cluster.stop("collector")
        pipeline.cluster.start("collector")
        pipeline.cluster.wait_ready("collector")
        replay = pipeline.shop.events[:500]
        again = asyncio.run(driver.post_batches(f"{pipeline.url('collector')}/v1/events", "events", replay, 500))
        assert again["accepted"] == len(replay)
        stats = driver.wait_preprocessed(pipeline.url("preprocessor"), 0, timeout=60)
        assert stats["duplicates_dropped"] >= len(replay)
        time.sleep(1.0)
        assert r.count_interactions(store) == before
    finally:
        store.close()


def test_promoted_model_beats_popularity(pipeline: Pipeline) -> None:
    report = pipeline.report
    version = pipeline.job["version"]
    models = report["models"]
    assert report["promoted"], report["decision"]
    assert models[f"model_v{version}"]["ndcg@10"] > models["popularity"]["ndcg@10"]
    rec = driver.recommend(pipeline.url("ranker"), pipeline.shop.users[5], 10)
    assert rec["model_version"] == version and not rec["fallback"]
    assert len(rec["items"]) == 10
    assert all(i["source"] and i["reason"] for i in rec["items"])


def test_the_evaluation_keeps_curves_and_the_card_the_training_history(pipeline: Pipeline) -> None:
    """What the HTML report plots: HR/NDCG at several K per model, and loss/validation NDCG per epoch."""
    from scalerec_models import repository as repo

    report, version = pipeline.report, pipeline.job["version"]
    assert set(report["curves"]) == set(report["models"])
    for name, curve in report["curves"].items():
        at10 = curve["k"].index(10)
        assert curve["ndcg"][at10] == pytest.approx(report["models"][name]["ndcg@10"])
        assert curve["hr"][at10] == pytest.approx(report["models"][name]["hr@10"])
        assert curve["hr"] == sorted(curve["hr"]) and curve["ndcg"] == sorted(curve["ndcg"])
    card = repo.read_card(pipeline.cluster.data_dir / "model_repository", repo.RANKER_MODEL, version)
    history = card["training_history"]
    assert set(history) == {"ranker", "two_tower"}
    for model, epochs in history.items():
        assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)), model
        assert all(e["loss"] > 0 and 0 <= e["val_ndcg@10"] <= 1 for e in epochs), model
    best = card["metrics"]["ranker.best_epoch"]
    assert max(history["ranker"], key=lambda e: e["val_ndcg@10"])["epoch"] == best


def test_known_user_never_gets_items_they_bought(pipeline: Pipeline) -> None:
    bought: dict[str, set[str]] = {}
    for e in pipeline.shop.events:
        if e.type.value == "purchase":
            bought.setdefault(e.user_id, set()).add(e.item_id)
    for user in list(bought)[:5]:
        rec = driver.recommend(pipeline.url("ranker"), user, 20)
        assert not {i["item_id"] for i in rec["items"]} & bought[user]


def test_unknown_user_gets_the_flagged_popularity_fallback(pipeline: Pipeline) -> None:
    rec = driver.recommend(pipeline.url("ranker"), "someone-new", 5)
    assert rec["fallback"] is True
    assert "unknown user" in rec["fallback_reason"]
    assert rec["model_version"] is None
    assert len(rec["items"]) == 5 and all(i["source"] == "trending" for i in rec["items"])


GOOD = {
    "event_id": "ok-1",
    "user_id": "u1",
    "item_id": "i1",
    "type": "view",
    "timestamp": "2026-01-01T00:00:00Z",
}


def _post(p: Pipeline, path: str, content: bytes | None = None, json: object = None) -> httpx.Response:
    return httpx.post(
        f"{p.url('collector')}{path}",
        content=content,
        json=json,
        timeout=30,
        headers={"content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("name", "body", "status", "names"),
    [
        ("malformed JSON", b'{"events": [', 400, "JSON"),
        ("missing field", {"events": [{k: v for k, v in GOOD.items() if k != "user_id"}]}, 422, "events[0].user_id"),
        ("mistyped field", {"events": [{**GOOD, "value": "lots"}]}, 422, "events[0].value"),
        ("unknown event type", {"events": [{**GOOD, "type": "teleport"}]}, 422, "events[0].type"),
        (
            "timestamp far in the future",
            {"events": [{**GOOD, "timestamp": "2099-01-01T00:00:00Z"}]},
            422,
            "events[0].timestamp",
        ),
        ("not a batch", {"event": GOOD}, 422, "events"),
        ("oversize batch", {"events": [{**GOOD, "event_id": f"b{i}"} for i in range(1001)]}, 413, "1000"),
    ],
)
def test_bad_event_input_gets_a_4xx_naming_the_problem(
    pipeline: Pipeline, name: str, body: object, status: int, names: str
) -> None:
    content = body if isinstance(body, bytes) else None
    r = _post(pipeline, "/v1/events", content=content, json=None if content else body)
    assert r.status_code == status, (name, r.text)
    assert names in r.text, (name, r.text)


def test_oversize_body_gets_413(pipeline: Pipeline) -> None:
    r = _post(pipeline, "/v1/events", content=b'{"events": ["' + b"x" * (5 * 1024 * 1024) + b'"]}')
    assert r.status_code == 413
    assert "over the limit" in r.json()["detail"]


def test_bad_events_are_rejected_and_the_rest_of_the_batch_accepted(pipeline: Pipeline) -> None:
    body = {"events": [{**GOOD, "event_id": "mixed-ok"}, {**GOOD, "event_id": "mixed-bad", "type": "teleport"}]}
    r = _post(pipeline, "/v1/events", json=body)
    assert r.status_code == 202
    data = r.json()
    assert data["accepted"] == 1 and data["rejected"] == 1
    assert data["errors"][0]["field"] == "events[1].type" and data["errors"][0]["id"] == "mixed-bad"


def test_unknown_item_id_in_a_request_gets_404(pipeline: Pipeline) -> None:
    r = httpx.get(f"{pipeline.url('ranker')}/v1/items/no-such-item/similar", timeout=10)
    assert r.status_code == 404
    assert "item_id" in r.text and "no-such-item" in r.text
    known = pipeline.shop.items[0].item_id
    assert httpx.get(f"{pipeline.url('ranker')}/v1/items/{known}/similar", timeout=10).status_code == 200


def test_bad_recommendation_parameters_get_422(pipeline: Pipeline) -> None:
    base = f"{pipeline.url('ranker')}/v1/recommendations"
    assert httpx.get(base, params={"k": 5}, timeout=10).status_code == 422  # no user_id
    r = httpx.get(base, params={"user_id": "u1", "k": 10_000}, timeout=10)
    assert r.status_code == 422 and "k" in r.text
    r = httpx.get(base, params={"user_id": "u1", "device": "toaster"}, timeout=10)
    assert r.status_code == 422 and "device" in r.text


def test_erasure_removes_the_users_history(pipeline: Pipeline) -> None:
    user = pipeline.shop.users[-1]
    history = httpx.get(f"{pipeline.url('preprocessor')}/v1/users/{user}/history", timeout=10).json()
    assert history
    r = httpx.delete(f"{pipeline.url('collector')}/v1/users/{user}", timeout=10)
    assert r.status_code == 202

    def gone() -> bool:
        h = httpx.get(f"{pipeline.url('preprocessor')}/v1/users/{user}/history", timeout=10).json()
        return not h

    driver.poll_until(gone, 30, 0.5, "the erasure")
