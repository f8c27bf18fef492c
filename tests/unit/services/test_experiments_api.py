"""The evaluator's experiments API in process on embedded backends: auth, validation, results, decision.

Model versions are bare folders here (the API checks that a version exists; what it scores is the
ranker's business, tested in test_ranker.py and the integration tests).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scalerec_adapters.bus import OutgoingMessage
from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.main import create_app
from scalerec_evaluator.schemas import EvaluationReport
from scalerec_events.experiments import Assignment, Experiment, ExperimentOut, ExperimentOutcome, ExperimentStatus
from scalerec_events.models import Context, Event, ImpressedItem, Impression, ModelAnnouncement
from scalerec_events.topics import Topic
from scalerec_metrics.experiments import ndcg_of_clicks
from scalerec_models import repository as repo

ADMIN = {"Authorization": "Bearer k-admin"}
SERVE = {"Authorization": "Bearer k-serve"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    repository = tmp_path / "models"
    for v in (1, 2, 3):
        (repository / repo.RANKER_MODEL / str(v)).mkdir(parents=True)
    repo.write_champion(repository, repo.RANKER_MODEL, 1)
    settings = EvaluatorSettings(
        data_dir=tmp_path,
        model_repository=repository,
        api_keys="k-admin:admin,k-serve:serve",
        min_experiment_impressions=300,
        unload_grace_s=0.1,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _spec(*variants: tuple[str, int, float], **extra: object) -> dict:
    return {"variants": [{"name": n, "model_version": v, "share": s} for n, v, s in variants], **extra}


HALVES = _spec(("champion", 1, 0.5), ("challenger", 2, 0.5), name="v2 vs v1")


def test_experiments_need_the_admin_scope(client: TestClient) -> None:
    assert client.post("/v1/experiments", json=HALVES).status_code == 401
    assert client.post("/v1/experiments", json=HALVES, headers=SERVE).status_code == 403
    assert client.get("/v1/experiments", headers=SERVE).status_code == 403
    assert client.get("/v1/experiments/exp-1", headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_spec(("champion", 1, 0.5), ("challenger", 2, 0.4)), "sum to 1"),
        (_spec(("champion", 1, 0.5), ("challenger", 9, 0.5)), "model version 9 is not in the model repository"),
        (_spec(("champion", 2, 0.5), ("challenger", 3, 0.5)), "the champion is version 1"),
        (_spec(("champion", 1, 0.5), ("champion", 2, 0.5)), "unique"),
        (_spec(("champion", 1, 1.2), ("challenger", 2, -0.2)), "share"),
        (_spec(("champion", 1, 1.0)), "at least 2"),
        (_spec(("Champion!", 1, 0.5), ("challenger", 2, 0.5)), "pattern"),
        ({"variants": [], "bogus": 1}, "bogus"),
    ],
)
def test_bad_experiment_definitions_get_a_4xx_that_says_what_is_wrong(
    client: TestClient, body: dict, says: str
) -> None:
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert says in r.text
    assert client.get("/v1/experiments", headers=ADMIN).json() == []  # nothing half-created


def _announced(client: TestClient, topic: Topic) -> list[bytes]:
    async def read() -> list[bytes]:
        bus = client.app.state.backends.bus  # type: ignore[attr-defined]
        consumer = await bus.consumer([client.app.state.evaluator.settings.topic(topic)], f"t-{time.time_ns()}")  # type: ignore[attr-defined]
        try:
            return [m.value for m in await consumer.getmany(timeout_ms=500, max_records=100)]
        finally:
            await consumer.stop()

    return client.portal.call(read)  # type: ignore[union-attr]


def test_an_experiment_is_stored_announced_changed_and_stopped(client: TestClient) -> None:
    created = client.post("/v1/experiments", json=HALVES, headers=ADMIN)
    assert created.status_code == 201, created.text
    exp = Experiment.model_validate(created.json())
    assert exp.running and exp.salt and exp.versions() == [1, 2]
    again = client.post("/v1/experiments", json=HALVES, headers=ADMIN)
    assert again.status_code == 409 and exp.experiment_id in again.text

    shown = client.get(f"/v1/experiments/{exp.experiment_id}", headers=ADMIN).json()
    assert [v["name"] for v in shown["results"]["variants"]] == ["champion", "challenger"]
    assert shown["results"]["variants"][1]["ctr_vs_control"] is None  # no data yet, no interval
    assert shown["results"]["variants"][1]["ctr_interval"] is None  # nor a rate's own one
    assert client.get("/v1/experiments/nope", headers=ADMIN).status_code == 404

    bad = client.patch(
        f"/v1/experiments/{exp.experiment_id}", json=_spec(("champion", 1, 0.9), ("x", 3, 0.2)), headers=ADMIN
    )
    assert bad.status_code == 422 and "sum to 1" in bad.text
    changed = client.patch(
        f"/v1/experiments/{exp.experiment_id}", json=_spec(("champion", 1, 0.8), ("challenger", 2, 0.2)), headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    assert Experiment.model_validate(changed.json()).salt == exp.salt  # users keep their variant where they can

    stopped = client.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert client.get(f"/v1/experiments/{exp.experiment_id}", headers=ADMIN).json()["results"] is not None
    states = [Experiment.model_validate_json(v) for v in _announced(client, Topic.EXPERIMENTS)]
    assert [(e.status.value, e.variants[1].share) for e in states] == [
        ("running", 0.5),
        ("running", 0.2),
        ("stopped", 0.2),
    ]
    # Served: the champion and the experiment's versions while it ran (config rendering needs ONNX files: none here).
    assert repo.read_champion(client.app.state.evaluator.settings.model_repository, repo.RANKER_MODEL) == 1  # type: ignore[attr-defined]


def test_while_an_experiment_runs_the_champion_changes_only_by_its_decision(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline gate used to promote a candidate under a running experiment: the champion became v3 while
    the experiment's control still served v1, so nobody was served the champion and the experiment compared
    against a version that no longer served outside it. A candidate that passes meanwhile is held."""
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    passed = EvaluationReport(
        users=100, items=50, k=10, models={"model_v3": {"ndcg@10": 0.3}}, version=3, champion_before=1, promoted=True
    )
    monkeypatch.setattr(evaluator, "_evaluate_sync", lambda version: passed.model_copy(update={"decision": "beats v1"}))
    r = client.post("/v1/evaluate/3", headers=ADMIN)
    assert r.status_code == 200, r.text
    report = r.json()
    assert not report["promoted"] and f"held: experiment {exp.experiment_id!r} is running" in report["decision"]
    assert "against champion v1" in report["decision"] and "judged again when it is stopped" in report["decision"]
    assert report["held"].startswith(f"experiment {exp.experiment_id!r} is running")
    assert repo.read_champion(repository, repo.RANKER_MODEL) == 1
    assert _announced(client, Topic.MODELS_PROMOTED) == []
    assert client.get("/v1/reports/3", headers=ADMIN).json()["promoted"] is False  # as stored

    client.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "the held v3 judged again and promoted")
    again = client.get("/v1/reports/3", headers=ADMIN).json()
    assert again["promoted"] and again["held"] is None
    assert [ModelAnnouncement.model_validate_json(v).version for v in _announced(client, Topic.MODELS_PROMOTED)] == [3]


def _until(ok: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def _versions_1_to_3(tmp_path: Path) -> tuple[Path, EvaluatorSettings]:
    """A repository with versions 1-3 and v1 the champion, and an evaluator's settings on it (a fresh app)."""
    repository = tmp_path / "models"
    for v in (1, 2, 3):
        (repository / repo.RANKER_MODEL / str(v)).mkdir(parents=True)
    repo.write_champion(repository, repo.RANKER_MODEL, 1)
    return repository, EvaluatorSettings(data_dir=tmp_path, model_repository=repository, api_keys="k-admin:admin")


def _report(version: int, champion: int | None, promoted: bool) -> EvaluationReport:
    return EvaluationReport(
        users=100,
        items=50,
        k=10,
        models={f"model_v{version}": {"ndcg@10": 0.3}},
        version=version,
        champion_before=champion,
        promoted=promoted,
        decision=f"v{version} {'beats' if promoted else 'does not beat'} v{champion}",
    )


def test_candidates_held_under_an_experiment_are_judged_again_newest_first_when_it_ends(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held candidates waited for an operator's POST /v1/evaluate after the experiment, which nothing told
    them to send. Now its end judges them against the champion it leaves: the newest first, then the older
    ones while none is better; one pruned meanwhile is skipped."""
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    for v in (4, 5):
        (repository / repo.RANKER_MODEL / str(v)).mkdir()
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    judged: list[int] = []
    better = {3: True, 4: True, 5: True}  # while the experiment runs, all three pass the gate

    def gate(version: int) -> EvaluationReport:
        judged.append(version)
        return _report(version, repo.read_champion(repository, repo.RANKER_MODEL), better[version])

    monkeypatch.setattr(evaluator, "_evaluate_sync", gate)
    for v in (3, 4, 5):
        assert client.post(f"/v1/evaluate/{v}", headers=ADMIN).json()["held"] is not None
    (repository / repo.RANKER_MODEL / "5").rmdir()  # pruned by a trainer's retention meanwhile
    better.update({4: False})  # judged again, v4 is not better than the champion; v3 is
    judged.clear()
    decided = client.post(f"/v1/experiments/{exp.experiment_id}/decide", headers=ADMIN).json()
    assert not decided["promoted"]  # no online data: it keeps running, and nothing is judged
    client.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "v3 promoted once v4 was not better")
    assert judged == [4, 3]
    reports = {r["version"]: r for r in client.get("/v1/reports", headers=ADMIN).json()["reports"]}
    assert (reports[4]["promoted"], reports[4]["held"]) == (False, None)
    assert (reports[3]["promoted"], reports[3]["held"]) == (True, None)
    assert reports[5]["held"] is not None  # not on disk: left as it was
    assert [ModelAnnouncement.model_validate_json(v).version for v in _announced(client, Topic.MODELS_PROMOTED)] == [3]


def test_a_candidate_held_when_the_evaluator_stopped_is_judged_again_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment ended (stopped) but the evaluator went down before judging its held candidate: the
    next start judges it."""
    from scalerec_evaluator.service import Evaluator

    repository, settings = _versions_1_to_3(tmp_path)
    monkeypatch.setattr(
        Evaluator, "_evaluate_sync", lambda self, v: _report(v, repo.read_champion(repository, repo.RANKER_MODEL), True)
    )
    monkeypatch.setattr(Evaluator, "rejudge_held_soon", lambda self: None)  # went down before judging
    with TestClient(create_app(settings)) as c:
        exp = Experiment.model_validate(c.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
        assert c.post("/v1/evaluate/3", headers=ADMIN).json()["held"] is not None
        c.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    assert repo.read_champion(repository, repo.RANKER_MODEL) == 1
    monkeypatch.undo()
    monkeypatch.setattr(
        Evaluator, "_evaluate_sync", lambda self, v: _report(v, repo.read_champion(repository, repo.RANKER_MODEL), True)
    )
    with TestClient(create_app(settings)) as c:
        _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "v3 judged again at start")
        assert c.get("/v1/reports/3", headers=ADMIN).json()["held"] is None


def test_a_candidate_whose_champion_changed_while_it_was_judged_is_judged_again_against_the_new_one(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An experiment's decision (v2 won) while v3 was being judged against v1: v3 replaced the online winner
    without ever being compared with it; then it was held and waited for an operator. Now the same
    evaluation judges it again, against v2."""
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    against: list[int | None] = []

    def judged(version: int) -> EvaluationReport:
        champion = repo.read_champion(repository, repo.RANKER_MODEL)
        against.append(champion)
        if champion == 1:  # the experiment's decision for v2 lands while v3 is judged against v1

            async def v2_wins() -> None:
                await evaluator.promote(2, {"online_ctr": 0.3}, experiment_id=exp.experiment_id)
                await client.app.state.experiments._end(exp, ExperimentStatus.CONCLUDED, "v2 won", "challenger")  # type: ignore[attr-defined]

            client.portal.call(v2_wins)  # type: ignore[union-attr]
            return _report(version, 1, True)
        return _report(version, champion, True)

    monkeypatch.setattr(evaluator, "_evaluate_sync", judged)
    report = client.post("/v1/evaluate/3", headers=ADMIN).json()
    assert against == [1, 2]
    assert report["promoted"] and report["held"] is None and report["champion_before"] == 2
    assert repo.read_champion(repository, repo.RANKER_MODEL) == 3


def test_a_challenger_that_wins_online_is_promoted_and_the_reason_recorded(client: TestClient) -> None:
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    assign = Assignment(exp)
    rng = random.Random(5)
    impressions, feedback = [], []
    clicked: dict[str, list[list[int]]] = {"champion": [], "challenger": []}  # per answer, positions clicked
    now = int(time.time() * 1000)
    for n in range(1200):
        user = f"u{n}"
        variant = assign.variant_of(user)
        rid = f"req{n:05d}"
        items = [ImpressedItem(item_id=f"i{j}", position=j, source="item_cf") for j in range(10)]
        imp = Impression(
            request_id=rid,
            user_id=user,
            model_version=variant.model_version,
            experiment_id=exp.experiment_id,
            variant=variant.name,
            items=items,
            ts_ms=now,
        )
        impressions.append(OutgoingMessage(imp.model_dump_json().encode(), user.encode()))
        clicked[variant.name].append([])
        if rng.random() < (0.30 if variant.name == "challenger" else 0.15):
            position = rng.randrange(3)  # item i{position} is shown at that position
            clicked[variant.name][-1].append(position)
            ev = Event(
                event_id=f"e{n}",
                user_id=user,
                item_id=f"i{position}",
                type="click",
                timestamp=time.time(),
                context=Context(request_id=rid, variant=variant.name),
            )
            feedback.append(OutgoingMessage(ev.model_dump_json().encode(), user.encode()))

    settings = client.app.state.evaluator.settings  # type: ignore[attr-defined]

    async def publish() -> None:
        producer = client.app.state.backends.bus.producer()  # type: ignore[attr-defined]
        await producer.send_batch(settings.topic(Topic.EVENTS_RAW), feedback)  # before their impressions, even
        await producer.send_batch(settings.topic(Topic.IMPRESSIONS), impressions)

    client.portal.call(publish)  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while True:
        res = client.get(f"/v1/experiments/{exp.experiment_id}", headers=ADMIN).json()["results"]
        counted = sum(v["clicks"] for v in res["variants"])
        if sum(v["impressions"] for v in res["variants"]) == 1200 and counted == len(feedback):
            break
        assert time.monotonic() < deadline, res
        time.sleep(0.2)
    challenger = res["variants"][1]
    assert challenger["ctr_vs_control"]["low"] > 0 and not res["srm"]["mismatch"]
    # Which users the keyed hash puts in each half changes with the experiment's salt, so the figure is
    # computed from this run's answers, not bounded by a range (0.2 < NDCG once failed at 0.19994).
    expected = statistics.fmean(ndcg_of_clicks(c) for c in clicked["challenger"])
    assert challenger["ndcg_at_10"] == pytest.approx(expected, rel=1e-9)
    assert res["variants"][0]["ndcg_at_10"] == pytest.approx(statistics.fmean(map(ndcg_of_clicks, clicked["champion"])))
    # Each variant's own CTR interval comes with the answer and holds its CTR.
    for v in res["variants"]:
        assert v["ctr_interval"]["low"] < v["ctr"] < v["ctr_interval"]["high"]

    decided = client.post(f"/v1/experiments/{exp.experiment_id}/decide", headers=ADMIN)
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["promoted"] and body["winner"] == "challenger" and body["model_version"] == 2
    assert "two-proportion z-test" in body["reason"] and body["experiment"]["status"] == "concluded"
    assert repo.read_champion(settings.model_repository, repo.RANKER_MODEL) == 2
    promoted = [ModelAnnouncement.model_validate_json(v) for v in _announced(client, Topic.MODELS_PROMOTED)]
    assert [a.version for a in promoted] == [2]
    final = client.get(f"/v1/experiments/{exp.experiment_id}", headers=ADMIN).json()
    assert final["experiment"]["decision"] == body["reason"] and final["results"]["variants"][1]["clicks"] > 0
    # What `scalerec demo` writes to experiment.json, and the report reads, is these two answers in one model.
    outcome = ExperimentOutcome(**ExperimentOut.model_validate(final).model_dump(), decision=body)
    assert outcome.decision.promoted and outcome.results.variant("challenger").ctr_vs_control is not None


def _gate(
    repository: Path, better: dict[int, bool], judged: list[int], delay_s: float = 0.0
) -> Callable[..., EvaluationReport]:
    """Like the real ``_evaluate_sync``: judged against the champion, which is no rival of itself."""

    def gate(version: int) -> EvaluationReport:
        time.sleep(delay_s)
        judged.append(version)
        champion = repo.read_champion(repository, repo.RANKER_MODEL)
        return _report(version, champion, True if champion == version else better[version])

    return gate


def _hold(client: TestClient, *versions: int) -> Experiment:
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    for v in versions:
        assert client.post(f"/v1/evaluate/{v}", headers=ADMIN).json()["held"] is not None
    return exp


def _promoted(client: TestClient) -> list[int]:
    return [ModelAnnouncement.model_validate_json(v).version for v in _announced(client, Topic.MODELS_PROMOTED)]


def test_experiments_ending_one_after_the_other_judge_a_held_version_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ends in a row started two re-judges that had both listed v4: it was judged, promoted and
    announced twice (the second time against itself)."""
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    (repository / repo.RANKER_MODEL / "4").mkdir()
    judged: list[int] = []
    monkeypatch.setattr(evaluator, "_evaluate_sync", _gate(repository, {3: True, 4: True}, judged, delay_s=0.3))
    exp = _hold(client, 3, 4)
    judged.clear()
    client.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    second = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    client.post(f"/v1/experiments/{second.experiment_id}/stop", headers=ADMIN)
    _until(lambda: not evaluator._rejudging, "both re-judges done")
    assert judged == [4] and _promoted(client) == [4]
    assert repo.read_champion(repository, repo.RANKER_MODEL) == 4


def test_a_held_version_that_fails_to_evaluate_does_not_keep_the_older_ones_waiting(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    (repository / repo.RANKER_MODEL / "4").mkdir()
    judged: list[int] = []
    passes = _gate(repository, {3: True, 4: True}, judged)
    monkeypatch.setattr(evaluator, "_evaluate_sync", passes)
    exp = _hold(client, 3, 4)

    def broken_v4(version: int) -> EvaluationReport:
        if version == 4:
            judged.append(4)
            raise RuntimeError("onnxruntime: InvalidGraph")
        return passes(version)

    monkeypatch.setattr(evaluator, "_evaluate_sync", broken_v4)
    judged.clear()
    client.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
    _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "v3 promoted although v4 failed")
    assert judged == [4, 3]
    assert "model 4 could not be judged again; it stays held" in caplog.text
    assert evaluator.report(4).held is not None  # tried again at the next end or start


def test_a_report_held_just_as_the_experiment_ends_is_still_judged_again(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate() saw the experiment running; it was stopped before the held report was stored, and the
    end's re-judge, reading the reports meanwhile, did not see it: v3 stayed held."""
    evaluator = client.app.state.evaluator  # type: ignore[attr-defined]
    lab = client.app.state.experiments  # type: ignore[attr-defined]
    repository = evaluator.settings.model_repository
    exp = Experiment.model_validate(client.post("/v1/experiments", json=HALVES, headers=ADMIN).json())
    monkeypatch.setattr(evaluator, "_evaluate_sync", _gate(repository, {3: True}, []))
    store = evaluator._store_report

    def stopped_before_stored(report: EvaluationReport) -> None:
        if report.held is not None:
            client.portal.call(lab.stop, exp.experiment_id)  # type: ignore[union-attr]
            time.sleep(0.3)
        store(report)

    monkeypatch.setattr(evaluator, "_store_report", stopped_before_stored)
    assert client.post("/v1/evaluate/3", headers=ADMIN).json()["held"] is not None
    _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "v3 judged again after the end")
    assert _promoted(client) == [3]


def test_a_shutdown_lets_the_held_version_being_judged_finish_and_be_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at once, a re-judge could stop between the champion file and its announcement: rankers
    already running stayed on the old champion, and nothing repaired it after a restart."""
    import asyncio

    from scalerec_evaluator.service import Evaluator

    repository, settings = _versions_1_to_3(tmp_path)
    monkeypatch.setattr(Evaluator, "_evaluate_sync", lambda self, v: _gate(repository, {3: True}, [])(v))
    with TestClient(create_app(settings)) as c:
        evaluator = c.app.state.evaluator  # type: ignore[attr-defined]
        exp = _hold(c, 3)
        send = evaluator.producer.send

        async def slow_announcement(topic: str, value: bytes, **kw: object) -> None:
            if topic == settings.topic(Topic.MODELS_PROMOTED):
                await asyncio.sleep(1.0)  # an acknowledgement under load
            await send(topic, value, **kw)

        monkeypatch.setattr(evaluator.producer, "send", slow_announcement)
        c.post(f"/v1/experiments/{exp.experiment_id}/stop", headers=ADMIN)
        _until(lambda: repo.read_champion(repository, repo.RANKER_MODEL) == 3, "v3 written as the champion")
    # The lifespan has ended (the app's shutdown waited for the re-judge): the announcement was sent.
    with TestClient(create_app(settings)) as c:
        assert _promoted(c) == [3]
        assert c.get("/v1/reports/3", headers=ADMIN).json()["promoted"] is True


def test_a_champion_whose_announcement_failed_is_announced_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus refused the announcement after the champion file changed: rankers already running stayed on
    v1, those started later read v3, and nothing announced v3 (a retry judged it against itself)."""
    from scalerec_adapters.bus import BusUnavailable
    from scalerec_evaluator.service import Evaluator

    repository, settings = _versions_1_to_3(tmp_path)
    monkeypatch.setattr(Evaluator, "_evaluate_sync", lambda self, v: _gate(repository, {3: True}, [])(v))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        evaluator = c.app.state.evaluator  # type: ignore[attr-defined]
        send = evaluator.producer.send

        async def refused(topic: str, value: bytes, **kw: object) -> None:
            if topic == settings.topic(Topic.MODELS_PROMOTED):
                raise BusUnavailable("the broker is down")
            await send(topic, value, **kw)

        monkeypatch.setattr(evaluator.producer, "send", refused)
        assert c.post("/v1/evaluate/3", headers=ADMIN).status_code >= 500
        assert repo.read_champion(repository, repo.RANKER_MODEL) == 3 and _promoted(c) == []
    with TestClient(create_app(settings)) as c:
        assert _promoted(c) == [3]
        evaluator = c.app.state.evaluator  # type: ignore[attr-defined]
        assert c.portal.call(evaluator.finish_promotion) is None  # done: not announced twice  # type: ignore[union-attr]
    with TestClient(create_app(settings)) as c:
        assert _promoted(c) == [3]


def test_the_champion_is_not_evaluated_again_and_a_version_in_a_path_is_digits(client: TestClient) -> None:
    """Evaluating v1, the champion, judged it against the baselines alone and overwrote its report with one
    held by the running experiment, for good; "1.0", " 1" and "+1" were read as v1, "-1" was a 404."""
    champion = client.post("/v1/evaluate/1", headers=ADMIN)
    assert champion.status_code == 409 and "is the champion" in champion.json()["detail"], champion.text
    for path in ("1.0", "%201", "+1", "1_0", "-1", "0"):
        r = client.post(f"/v1/evaluate/{path}", headers=ADMIN)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "version", (path, r.text)
        assert client.get(f"/v1/reports/{path}", headers=ADMIN).status_code == 422, path
