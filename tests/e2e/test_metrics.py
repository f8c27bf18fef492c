"""Prometheus /metrics of the five running services: every series a dashboard panel queries exists,
and no label value is a raw path or an id; training reports its progress by epoch."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import dashboard
from tests.e2e.conftest import Pipeline

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")


def _scrape(url: str) -> list[tuple[str, dict[str, str]]]:
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def test_metrics_have_every_dashboard_series_and_only_route_templates(pipeline: Pipeline) -> None:
    users = [u for u in pipeline.shop.users[:5]]
    items = [i.item_id for i in pipeline.shop.items[:3]]
    # Requests whose raw paths carry ids, and ones no route matches.
    for user in users:
        assert httpx.get(f"{pipeline.url('preprocessor')}/v1/users/{user}/history", timeout=30).status_code == 200
        assert httpx.get(f"{pipeline.url('ranker')}/v1/recommendations", params={"user_id": user}).status_code == 200
        assert httpx.get(f"{pipeline.url('ranker')}/v1/users/{user}/no-such-route").status_code == 404
    for item in items:
        httpx.get(f"{pipeline.url('ranker')}/v1/items/{item}/similar", timeout=30)
    job_id = pipeline.job["job_id"]
    assert httpx.get(f"{pipeline.url('trainer')}/v1/train/{job_id}", timeout=30).status_code == 200
    assert httpx.get(f"{pipeline.url('evaluator')}/v1/reports/{pipeline.job['version']}").status_code == 200

    found: set[str] = set()
    for service in SERVICES:
        url = pipeline.url(service)
        samples = _scrape(url)
        templates = set(httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"])
        assert any(name == "http_server_request_duration_seconds_count" for name, _ in samples), service
        for name, labels in samples:
            found.add(name)
            for key, value in labels.items():
                where = f"{service}: {name}{{{key}={value!r}}}"
                if value.startswith("/"):
                    assert value in templates, f"{where} is not a route template"
                assert not any(user in value for user in users), f"{where} carries a user id"
                assert not any(item in value for item in items), f"{where} carries an item id"
                assert job_id not in value, f"{where} carries a job id"
        routes = {labels.get("http_route") for name, labels in samples if name.startswith("http_server_request")}
        assert "/metrics" not in routes and "/healthz" not in routes  # scrapes and probes are not traffic
    assert {"/v1/users/{user_id}/history"} <= {
        labels.get("http_route") for name, labels in _scrape(pipeline.url("preprocessor"))
    }
    missing = dashboard.all_metric_names() - found
    assert not missing, f"dashboard panels query metrics no service exposes: {sorted(missing)}"


def test_the_ranker_reports_what_it_served(pipeline: Pipeline) -> None:
    # The ranker runs a worker per CPU, each with its own metrics, and a request or a scrape reaches
    # one of them: ask a few times, and scrape until a worker that answered one is reached.
    for _ in range(6):
        r = httpx.get(
            f"{pipeline.url('ranker')}/v1/recommendations", params={"user_id": "someone-brand-new"}, timeout=30
        )
        assert r.status_code == 200, r.text
    served: dict[tuple[str, str, str], bool] = {}
    for _ in range(30):
        samples = _scrape(pipeline.url("ranker"))
        served = {
            (labels["variant"], labels["model_version"], labels["fallback_reason"]): True
            for name, labels in samples
            if name == "scalerec_ranker_recommendations_total"
        }
        if ("champion", "none", "unknown_user") in served:
            break
    assert ("champion", "none", "unknown_user") in served
    if pipeline.report["promoted"]:
        version = str(pipeline.job["version"])
        assert ("champion", version, "none") in served
        gauge = [v for n, v in samples if n == "scalerec_ranker_model_version"]
        assert gauge


def test_training_reports_epochs_as_it_goes(pipeline: Pipeline) -> None:
    job = httpx.get(f"{pipeline.url('trainer')}/v1/train/{pipeline.job['job_id']}", timeout=30).json()
    progress = job["progress"]
    assert {p["model"] for p in progress} == {"ranker", "two-tower"}
    for model in ("ranker", "two-tower"):
        epochs = [p for p in progress if p["model"] == model]
        assert [p["epoch"] for p in epochs] == list(range(1, len(epochs) + 1))
        assert all(p["loss"] > 0 and p["max_epochs"] >= len(epochs) for p in epochs)
        assert all(p["val_ndcg_at_10"] is not None for p in epochs)  # the pipeline trains with a holdout
    samples = dict((name, labels) for name, labels in _scrape(pipeline.url("trainer")))
    assert "scalerec_trainer_loss" in samples and "scalerec_trainer_job_duration_seconds_count" in samples
