"""The operator routes of the preprocessor, trainer and evaluator, in process on embedded backends.

They read what each service's lifespan built (through its ``deps`` providers): an answer here
means the route found the right object.
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.main import create_app as evaluator_app
from scalerec_events.models import Event
from scalerec_preprocessor.config import PreprocessorSettings
from scalerec_preprocessor.consumers.events import BATCH_GC_THRESHOLD
from scalerec_preprocessor.main import create_app as preprocessor_app
from scalerec_storage import records as r
from scalerec_storage import schema as s
from scalerec_trainer.config import TrainerSettings
from scalerec_trainer.main import create_app as trainer_app


def test_preprocessor_reports_its_consumers_and_a_users_history(tmp_path: Path) -> None:
    with TestClient(preprocessor_app(PreprocessorSettings(data_dir=tmp_path, auth="disabled"))) as client:
        stats = client.get("/v1/stats")
        assert stats.status_code == 200, stats.text
        body = stats.json()
        assert set(body["workers"]) == {"items", "events", "erasure"}
        assert body["events_stored"] == body["items_stored"] == body["users_erased"] == 0
        assert body["timeline_memo_entries"] == 0
        history = client.get("/v1/users/u1/history", params={"limit": 5})
        assert history.status_code == 200, history.text
        assert history.json() == []
        store = client.app.state.store  # type: ignore[attr-defined]
        event = Event(
            event_id="e1", user_id="u1", item_id="i1", type="view", timestamp=datetime(2026, 5, 1, tzinfo=UTC)
        )
        store.put(s.INTERACTIONS, s.interaction_key("u1", event.ts_ms, "e1"), r.interaction_cells(event))
        history = client.get("/v1/users/u1/history", params={"limit": 5})
        assert history.status_code == 200, history.text
        assert history.json() == [{"item_id": "i1", "ts_ms": event.ts_ms, "type": "view", "event_id": "e1"}]
        for bad in ("u1%7Cu2", "u1%00", "%E2%80%8Bu1", "u" * 129):
            hostile = client.get(f"/v1/users/{bad}/history")
            assert hostile.status_code == 422, hostile.text
            assert hostile.json()["errors"][0]["field"] == "user_id"


def test_the_preprocessor_consumes_with_its_start_up_frozen_and_a_batch_sized_gc_threshold(tmp_path: Path) -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    with TestClient(preprocessor_app(PreprocessorSettings(data_dir=tmp_path, auth="disabled"))) as client:
        assert client.get("/v1/stats").status_code == 200
        assert gc.get_freeze_count() > 10_000  # the imports, the clients, the app
        assert gc.get_threshold() == (BATCH_GC_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before  # given back at shutdown


def test_trainer_runs_a_job_and_reports_it(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=tmp_path, model_repository=tmp_path / "models", auth="disabled")
    with TestClient(trainer_app(settings)) as client:
        configured = client.post("/v1/train", json={"epochs": 3})  # not an option: refused, not ignored
        assert configured.status_code == 422 and configured.json()["errors"][0]["field"] == "body"
        assert "takes no body" in configured.json()["detail"]
        assert client.get("/v1/train").json() == []
        started = client.post("/v1/train", json={})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 30
        while (job := client.get(f"/v1/train/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "failed" and job["error"]  # nothing to train on yet
        assert [j["job_id"] for j in client.get("/v1/train").json()] == [job_id]
        nope = client.get("/v1/train/nope")  # a 404 names the field at fault, like every 4xx
        assert nope.status_code == 404 and nope.json()["errors"][0]["field"] == "job_id"
        for hostile in ("j" * 129, "a%00b", "a%7Cb"):  # not an id: 422, not echoed back in a 404
            refused = client.get(f"/v1/train/{hostile}")
            assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "job_id", refused.text


def test_evaluator_reports_nothing_before_any_candidate(tmp_path: Path) -> None:
    settings = EvaluatorSettings(data_dir=tmp_path, model_repository=tmp_path / "models", auth="disabled")
    with TestClient(evaluator_app(settings)) as client:
        assert client.get("/v1/reports").json() == {"champion": None, "reports": []}
        unknown = client.get("/v1/reports/1")
        assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "version"
        missing = client.post("/v1/evaluate/1")
        assert missing.status_code == 404 and "not in the model repository" in missing.text
        assert client.get("/v1/online").json() == {"variants": {}}
