"""The evaluator measures the lists a version would serve, not only its model's ranking of the catalogue."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_core.settings import ServedListSettings
from scalerec_evaluator.gate import decide
from scalerec_evaluator.holdout import Holdout, build_holdout
from scalerec_evaluator.offline import K, evaluate, evaluate_version, served_candidates, served_scores
from scalerec_metrics import target_ranks
from scalerec_models import candidates
from scalerec_models import repository as repo
from scalerec_models.bundle import ITEM_EMBEDDINGS_FILE
from scalerec_models.data import FIRST_ITEM
from scalerec_models.runtime import ModelVersion
from scalerec_ranker.items import ItemRow
from scalerec_ranker.serving import ITEM_CF, RETRIEVAL, TRENDING, ServingModel
from scalerec_storage import records as r

from tests.unit.services.ingest import trained_shop


def _shelf() -> Holdout:
    """30 items in three categories (i0-i9 a, i10-i19 b, i20-i29 c), scored best first by number."""
    items = [f"i{n}" for n in range(30)]
    h = Holdout(
        items=items,
        features=[[0]] * 30,
        index={i: n for n, i in enumerate(items)},
        past_items={},
        popularity=Counter(),
        categories=["a"] * 10 + ["b"] * 10 + ["c"] * 10,
        available=[True] * 30,
    )
    for user, target in (("u0", 7), ("u1", 12), ("u2", 1), ("u3", 3)):
        h.users.append(user)
        h.histories.append(["i29"])
        h.contexts.append([0])
        h.targets.append(target)
    return h


def _ranks(h: Holdout, fn) -> list[int]:  # type: ignore[no-untyped-def]
    rows = np.arange(len(h.users))
    return target_ranks(fn(rows), np.asarray(h.targets), h.exclusions()).tolist()


def test_served_answers_apply_the_candidates_and_the_category_cap() -> None:
    h = _shelf()

    def full(rows: np.ndarray) -> np.ndarray:
        return np.tile(-np.arange(30, dtype=np.float64), (len(rows), 1))

    everything = np.arange(29)  # i29 is in every history: the holdout does not let it compete anyway
    lists = [everything, everything, np.delete(everything, 1), everything]
    assert _ranks(h, full) == [7, 12, 1, 3]  # the model's ranking: u0, u2 and u3 hit, u1 does not
    capped = served_scores(full, h, ServedListSettings(category_cap=0.5), lists)
    # At most 5 of a category: i0-i4, then i10-i14 — u0's i7 is pushed out, u1's i12 comes in at the
    # 8th place, u2's i1 was never a candidate, u3's i3 keeps its place.
    ranks = _ranks(h, capped)
    assert ranks[0] >= K and ranks[1] == 7 and ranks[2] >= K and ranks[3] == 3
    uncapped = _ranks(h, served_scores(full, h, ServedListSettings(category_cap=1), lists))
    assert uncapped[0] == 7 and uncapped[1] >= K and uncapped[2] >= K and uncapped[3] == 3
    # A baseline ranks the whole catalogue: its candidates are its own best MAX_CANDIDATES.
    top3 = _ranks(h, served_scores(full, h, ServedListSettings(category_cap=1, max_candidates=3), None))
    assert top3[2] == 1 and min(top3[0], top3[1], top3[3]) >= K  # only i0-i2 are served: u2's i1 is
    metrics, _ = evaluate("capped", capped, h)
    assert metrics["hr@10"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Holdout]:
    repository, _ = trained_shop(tmp_path_factory.mktemp("evaluator"), seed=5)
    store = SqliteStore(repository.parent / "store.db")
    try:
        card = repo.read_card(repository, repo.RANKER_MODEL, 1)
        holdout = build_holdout(store, int(card["data_window"]["end_ms"]), 2000)
    finally:
        store.close()
    assert len(holdout.users) >= 20, "the shop left too small a holdout to measure"
    return repository, holdout


def test_a_version_is_measured_on_the_candidates_the_ranker_would_score(trained: tuple[Path, Holdout]) -> None:
    repository, h = trained
    settings = ServedListSettings(max_candidates=40, candidates_per_source=30)
    model = ModelVersion.load(repository, 1)
    lists = served_candidates(repository, 1, h, OnnxRuntimeScorer(repository), settings, model)
    assert len(lists) == len(h.users)
    for history, cands in zip(h.histories, lists, strict=True):
        assert 0 < len(cands) <= 40 and len(set(cands.tolist())) == len(cands)
        just_seen = {h.index[i] for i in history[-candidates.JUST_SEEN :] if i in h.index}
        assert not just_seen & set(cands.tolist())
        assert all(h.available[c] for c in cands.tolist())
    # The retrieval part is the user tower's nearest items: the first case's top item leads its list.
    inputs = model.encode_user(h.histories[:1], h.contexts[:1])
    emb = asyncio.run(OnnxRuntimeScorer(repository).infer(repo.USER_TOWER_MODEL, 1, inputs, ["user_embedding"]))
    _, idx = model.ann.search(np.asarray(emb["user_embedding"], dtype=np.float32), 30)  # type: ignore[union-attr]
    nearest = [h.index[i] for i in (model.bundle.vocab.item_id(int(j)) for j in idx[0]) if i in h.index]
    seen = {h.index[i] for i in h.histories[0][-candidates.JUST_SEEN :] if i in h.index}
    offered = [n for n in nearest if n not in seen and h.available[n]]
    assert len(offered) >= 10
    assert lists[0][: len(offered)].tolist() == offered


def test_the_report_has_served_metrics_for_every_row_and_the_gate_can_use_them(
    trained: tuple[Path, Holdout],
) -> None:
    repository, h = trained
    report = evaluate_version(repository, 1, None, h, ServedListSettings(category_cap=0.5))
    assert set(report.models) == {"popularity", "item_cf", "model_v1"}
    for name, m in report.models.items():
        assert 0 <= m["served_hr@10"] <= 1 and 0 <= m["served_ndcg@10"] <= m["served_hr@10"], name
        assert 0 < m["served_coverage@10"] <= 1, name
    mine = report.models["model_v1"]
    # No answer can hold a target its candidates lack, and the cap only removes hits a full ranking had
    # or adds ones from further down: the served hit rate is bounded by the candidates' recall.
    assert 0 < mine["candidate_recall"] <= 1 and mine["served_hr@10"] <= mine["candidate_recall"]
    assert 0 < mine["candidates"] <= ServedListSettings().max_candidates
    assert "candidate_recall" not in report.models["item_cf"]
    decision = decide(report, 1, None, "served_ndcg@10", 0.0)
    assert decision.reason.startswith("served_ndcg@10")


def test_a_version_with_broken_retrieval_ranks_as_well_but_is_refused(trained: tuple[Path, Holdout]) -> None:
    """Version 2 is version 1 with its item embeddings shuffled (the ANN's table): the ranking model is the same
    file, so the full ranking cannot tell them apart; the served lists and the gate can."""
    repository, h = trained
    for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
        shutil.copytree(repository / model / "1", repository / model / "2", dirs_exist_ok=True)
    emb_file = repository / repo.RANKER_MODEL / "2" / ITEM_EMBEDDINGS_FILE
    emb = np.load(emb_file)
    rows = np.arange(FIRST_ITEM, len(emb))
    emb[rows] = emb[np.random.default_rng(0).permutation(rows)]
    np.save(emb_file, emb)
    try:
        # Fewer candidates than the catalogue (120 items), retrieval's first: the lists are what the ANN finds.
        report = evaluate_version(repository, 2, 1, h, ServedListSettings(candidates_per_source=15, max_candidates=15))
    finally:
        for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
            shutil.rmtree(repository / model / "2")
    v1, v2 = report.models["model_v1"], report.models["model_v2"]
    assert v2["ndcg@10"] == pytest.approx(v1["ndcg@10"])
    # Measured: recall 0.60 against 0.08, served NDCG@10 0.34 against 0.07.
    assert v2["candidate_recall"] < v1["candidate_recall"] * 0.5, (v1, v2)
    assert v2["served_ndcg@10"] < v1["served_ndcg@10"] * 0.5, (v1, v2)
    decision = decide(report, 2, 1, "ndcg@10", 0.0, max_recall_drop=0.05)
    assert not decision.promote and "candidate_recall" in decision.reason


def test_the_evaluator_builds_the_candidates_the_ranker_builds(trained: tuple[Path, Holdout]) -> None:
    """The same holdout cases through the ranker's own ServingModel (its table, retrieval positions, item-CF,
    merge, the trending list given as the past's popularity) give the same candidates, item for item."""
    repository, h = trained
    settings = ServedListSettings(candidates_per_source=20, max_candidates=45)
    model = ModelVersion.load(repository, 1)
    scorer = OnnxRuntimeScorer(repository)
    lists = served_candidates(repository, 1, h, scorer, settings, model)
    store = SqliteStore(repository.parent / "store.db")
    try:
        rows = [ItemRow.of(item, features) for item, features in r.scan_catalogue(store)]
    finally:
        store.close()
    serving = ServingModel.build(model, rows)
    table = serving.table
    trending = [(i, float(n)) for i, n in h.popularity.most_common(20)]
    lists_of_ranker = []
    for start in range(0, len(h.users), 64):  # the evaluator's batches: the same floats out of the user tower
        cases = range(start, min(start + 64, len(h.users)))
        inputs = model.encode_user([h.histories[c] for c in cases], [h.contexts[c] for c in cases])
        emb = asyncio.run(scorer.infer(repo.USER_TOWER_MODEL, 1, inputs, ["user_embedding"]))["user_embedding"]
        _, idx = model.ann.search(np.asarray(emb, dtype=np.float32), 20)  # type: ignore[union-attr]
        for c, found in zip(cases, idx, strict=True):
            hist_pos = table.positions_or_unknown(h.histories[c])  # as Recommender._answer
            recent = candidates.recent_seeds(hist_pos, serving.first_occurrences, FIRST_ITEM)
            cf_pos, cf_score, cf_seed = serving.item_cf(recent, 20)
            lists_pos = serving.baseline_positions(1, trending, [])
            parts = [
                (RETRIEVAL, serving.retrieval_positions(found), None, None),
                (ITEM_CF, cf_pos, cf_score, cf_seed),
                (TRENDING, lists_pos.trending[:20], lists_pos.trending_prior[:20], None),
            ]
            merged = serving.merge(parts, hist_pos[-candidates.JUST_SEEN :], 45)
            lists_of_ranker.append(list(table.id_of(merged.positions)))
    assert [[h.items[c] for c in cands.tolist()] for cands in lists] == lists_of_ranker
    assert sum(len(x) for x in lists_of_ranker) > 20 * len(h.users)


def test_ties_short_answers_and_unavailable_items_count_as_in_the_full_ranking() -> None:
    h = _shelf()

    def flat(rows: np.ndarray) -> np.ndarray:  # no opinion at all: every item ties
        return np.zeros((len(rows), 30))

    everything = [np.arange(29)] * 4
    assert min(_ranks(h, flat)) >= K  # the full ranking counts ties against the model ...
    assert min(_ranks(h, served_scores(flat, h, ServedListSettings(category_cap=1), everything))) >= K  # ... so here

    def ordered(rows: np.ndarray) -> np.ndarray:
        return np.tile(-np.arange(30, dtype=np.float64), (len(rows), 1))

    short = [np.array([0, 1, 2])] * 4  # three candidates: an answer of three, not ten
    metrics, _ = evaluate("short", served_scores(ordered, h, ServedListSettings(category_cap=1), short), h)
    assert metrics["coverage@10"] == pytest.approx(3 / 30)
    h.available[1] = False  # u2's target, now off the catalogue: nobody can serve it, a baseline neither
    ranks = _ranks(h, served_scores(ordered, h, ServedListSettings(category_cap=1), None))
    assert ranks[2] >= K and ranks[3] == 2  # u3's i3 moves up a place
