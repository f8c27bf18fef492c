"""Experiments end to end in process: the evaluator starts one, every ranker replica routes by it.

The evaluator and two ranker replicas share one embedded deployment (the SQLite bus and store in
one data dir), as they share Kafka and HBase when deployed.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.main import create_app as evaluator_app
from scalerec_events.experiments import Assignment, Experiment
from scalerec_models import repository as repo
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app as ranker_app

from tests.unit.services.test_ranker import World, world  # noqa: F401  (the module-scoped trained model)

ADMIN = {"Authorization": "Bearer k-admin"}


def _ranker(w: World) -> TestClient:
    settings = RankerSettings(
        data_dir=w.data_dir, model_repository=w.repository, scoring_timeout_ms=5000, api_keys="k-serve:serve"
    )
    return TestClient(ranker_app(settings), headers={"Authorization": "Bearer k-serve"})


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_every_replica_follows_the_running_experiment_including_one_started_later(world: World, tmp_path: Path) -> None:  # noqa: F811
    settings = EvaluatorSettings(
        data_dir=world.data_dir, model_repository=world.repository, api_keys="k-admin:admin", unload_grace_s=0.1
    )
    users = world.shop.users[:60]
    with TestClient(evaluator_app(settings)) as evaluator, _ranker(world) as first:
        assert first.get("/v1/model").json()["model_version"] == 1
        spec = {
            "variants": [
                {"name": "champion", "model_version": 1, "share": 0.5},
                {"name": "challenger", "model_version": 2, "share": 0.5},
            ]
        }
        created = evaluator.post("/v1/experiments", json=spec, headers=ADMIN)
        assert created.status_code == 201, created.text
        exp = Experiment.model_validate(created.json())
        # Triton's configs now serve both versions (the evaluator is their one writer).
        assert repo.read_served_versions(world.repository, repo.RANKER_MODEL) == [1, 2]

        _wait_for(lambda: first.get("/v1/model").json()["experiment_id"] == exp.experiment_id)
        assert first.get("/v1/model").json()["variants"] == {"champion": 1, "challenger": 2}
        expected = Assignment(exp)

        def answers(client: TestClient) -> dict[str, tuple[str, int]]:
            out = {}
            for u in users:
                body = client.get("/v1/recommendations", params={"user_id": u, "k": 5}).json()
                assert body["experiment_id"] == exp.experiment_id and not body["fallback"]
                out[u] = (body["variant"], body["model_version"])
            return out

        seen = answers(first)
        assert all(seen[u] == (expected.variant_of(u).name, expected.variant_of(u).model_version) for u in users)
        assert set(Counter(v for v, _ in seen.values())) == {"champion", "challenger"}
        # The metrics tell the variants apart: answers counted per variant, each variant's version a gauge.
        scraped = first.get("/metrics").text
        assert re.search(r'scalerec_ranker_recommendations_total\{[^}]*variant="challenger"', scraped)
        assert re.search(r'scalerec_ranker_model_version\{[^}]*variant="challenger"[^}]*\} 2\.0', scraped)

        with _ranker(world) as later:  # started after the experiment: it replays the compacted topic
            _wait_for(lambda: later.get("/v1/model").json()["experiment_id"] == exp.experiment_id)
            assert later.get("/v1/model").json()["model_version"] == 1  # the champion, not the highest version
            assert answers(later) == seen  # same user, same variant, on every replica

        stopped = evaluator.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
        assert stopped.status_code == 200
        _wait_for(lambda: first.get("/v1/model").json()["experiment_id"] is None)
        body = first.get("/v1/recommendations", params={"user_id": users[0], "k": 5}).json()
        assert body["variant"] is None and body["model_version"] == 1
