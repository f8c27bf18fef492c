"""Offline evaluation of a model version against the champion and the baselines, on the same holdout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_core.settings import ServedListSettings
from scalerec_metrics import RankingCurve, catalogue_coverage, evaluate_full_ranking
from scalerec_models import candidates
from scalerec_models import repository as repo
from scalerec_models.baselines import ItemKNN, Popularity
from scalerec_models.data import FIRST_ITEM, ItemVocab
from scalerec_models.runtime import ModelVersion

from scalerec_evaluator.holdout import Holdout
from scalerec_evaluator.schemas import EvaluationReport

log = logging.getLogger(__name__)

K = 10
# Cut-offs of the HR@K / NDCG@K curves in the report (those above the catalogue's size are dropped).
CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
ScoreFn = Callable[[np.ndarray], np.ndarray]


def _baseline_scores(h: Holdout, model: Popularity | ItemKNN) -> ScoreFn:
    """A shared baseline (the same code ``scalerec eval-dataset`` measures) fitted on the past only."""
    vocab = ItemVocab(h.items)
    past = [vocab.indices(sorted(items)) for items in h.past_items.values()]
    model.fit(past, vocab.size)

    def score(rows: np.ndarray) -> np.ndarray:
        hist = [vocab.indices(h.histories[int(c)][-20:]) for c in rows]
        return model.score(hist)[:, FIRST_ITEM:]

    return score


def model_scores(
    repository: Path, version: int, h: Holdout, scorer: OnnxRuntimeScorer, model: ModelVersion | None = None
) -> ScoreFn:
    import asyncio

    model = model or ModelVersion.load(repository, version)

    def score(case_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(case_rows), len(h.items)), dtype=np.float64)
        for start in range(0, len(case_rows), 16):
            batch = [int(c) for c in case_rows[start : start + 16]]
            inputs = model.encode(
                [h.histories[c] for c in batch],
                [h.contexts[c] for c in batch],
                [h.items] * len(batch),
                [h.features] * len(batch),
            )
            res = asyncio.run(scorer.infer(repo.RANKER_MODEL, version, inputs, ["scores"]))
            out[start : start + len(batch)] = res["scores"][:, : len(h.items)]
        return out

    return score


def served_candidates(
    repository: Path,
    version: int,
    h: Holdout,
    scorer: OnnxRuntimeScorer,
    settings: ServedListSettings,
    model: ModelVersion | None = None,
) -> list[np.ndarray]:
    """Each holdout case's candidates (catalogue columns) as the ranker builds them from ``version``
    (:mod:`scalerec_models.candidates`): the user tower's nearest items (ANN), the item-item neighbours of
    the history's most recent items, the trending list (here the past's most popular items: the
    preprocessor's rollups are not kept point in time), merged in that order with each item once, the
    history's last few items and what the catalogue does not offer left out, cut at ``MAX_CANDIDATES``.
    The fresh-items list and its exploration slots are not measured (not kept point in time either)."""
    import asyncio

    model = model or ModelVersion.load(repository, version)
    per, n = settings.candidates_per_source, len(h.items)
    vocab = model.bundle.vocab
    available = np.asarray(h.available, dtype=bool) if h.available else np.ones(n, dtype=bool)
    # Items the version knows that the catalogue no longer has: the ranker's table keeps them (never offered),
    # so in a history they still seed item-CF; they get positions after the catalogue's columns here.
    position = dict(h.index)
    for item in sorted((set(vocab.items) | set(model.neighbors)) - h.index.keys()):
        position[item] = len(position)
    nbr_pos, nbr_score = candidates.neighbour_matrix(model.neighbors, position, len(position))
    slot = np.empty(len(position), dtype=np.int64)

    def first(positions: np.ndarray) -> np.ndarray:
        return candidates.first_occurrences(positions, slot)

    trending = np.asarray([h.index[i] for i, _ in h.popularity.most_common(per) if i in h.index], dtype=np.int64)
    retrieval: list[np.ndarray] = [np.zeros(0, np.int64)] * len(h.users)
    user_tower = repository / repo.USER_TOWER_MODEL / str(version) / repo.MODEL_FILE
    if model.ann is not None and not vocab.buckets and user_tower.is_file():  # as the ranker: no ids behind hashed rows
        column = np.full(vocab.size, -1, dtype=np.int64)  # model index -> catalogue column
        for item, col in h.index.items():
            mi = vocab.index(item)
            if mi >= FIRST_ITEM:
                column[mi] = col
        for start in range(0, len(h.users), 64):
            cases = range(start, min(start + 64, len(h.users)))
            inputs = model.encode_user([h.histories[c] for c in cases], [h.contexts[c] for c in cases])
            res = asyncio.run(scorer.infer(repo.USER_TOWER_MODEL, version, inputs, ["user_embedding"]))
            _, idx = model.ann.search(np.asarray(res["user_embedding"], dtype=np.float32), per)
            for c, row in zip(cases, idx, strict=True):
                retrieval[c] = np.where(row >= FIRST_ITEM, column[row], -1)
    out = []
    for case, history in enumerate(h.histories):
        hist = np.asarray([position.get(i, -1) for i in history], dtype=np.int64)  # -1: an item nobody knows
        seeds = candidates.recent_seeds(hist[hist >= 0], first)
        cf, _, _ = candidates.item_cf(nbr_pos, nbr_score, seeds, per, first)
        positions = np.concatenate([retrieval[case], cf, trending])
        offer = (positions >= 0) & (positions < n)
        offer[offer] = available[positions[offer]]
        offer[np.isin(positions, hist[-candidates.JUST_SEEN :])] = False
        out.append(positions[candidates.merged(positions, offer, settings.max_candidates, first)])
    return out


def served_scores(
    full: ScoreFn, h: Holdout, settings: ServedListSettings, lists: list[np.ndarray] | None = None
) -> ScoreFn:
    """The answers of ``K`` items served from ``full``'s scores: each case's candidates (``lists``; without
    them, as for a baseline, its own top ``MAX_CANDIDATES`` of what the catalogue offers) that the holdout lets
    compete, ordered by the scores, re-ranked with the category cap as the ranker does. An answer's items score
    K..1 in its order and the rest -inf (ranks past K are not measured). Ties count against the model, as in
    the full ranking: items of equal score share the lowest place among them, and an item tied with a
    candidate left out of the answer is not counted in it (a popularity count ties often)."""
    codes: dict[str, int] = {}
    names = h.categories or [""] * len(h.items)
    category = np.asarray([candidates.category_code(c, codes) for c in names], dtype=np.int64)
    unavailable = ~np.asarray(h.available, dtype=bool) if h.available else np.zeros(len(h.items), dtype=bool)
    cap = candidates.per_category(K, settings.category_cap)
    exclusions = h.exclusions()

    def score(rows: np.ndarray) -> np.ndarray:
        s = np.array(full(rows), dtype=np.float64, copy=True)
        s[:, unavailable] = -np.inf
        out = np.full(s.shape, -np.inf)
        for r, case in enumerate(rows.tolist()):
            s[r, exclusions[case]] = -np.inf
            if lists is None:
                limit = min(settings.max_candidates, s.shape[1])
                cand = np.argpartition(-s[r], limit - 1)[:limit] if limit < s.shape[1] else np.arange(s.shape[1])
            else:
                cand = lists[case]
            cand = cand[np.isfinite(s[r, cand])]
            order = np.argsort(-s[r, cand], kind="stable")
            picked = candidates.rerank(order, category[cand], K, cap)
            answer = s[r, cand[picked]]
            left_out = np.delete(s[r, cand], picked)
            for place, value in enumerate(answer.tolist()):
                if not (left_out == value).any():
                    out[r, cand[picked[place]]] = K - np.flatnonzero(answer == value).max()
        return out

    return score


def evaluate(name: str, fn: ScoreFn, h: Holdout) -> tuple[dict[str, float], RankingCurve]:
    """The @K metrics the gate reads, and HR/NDCG at every cut-off of ``CURVE_KS`` from the same ranks."""
    started = time.perf_counter()
    tops: list[list[int]] = []  # coverage: the share of the catalogue that appears in someone's top K

    def top_k(s: np.ndarray) -> None:  # from the same scores as the ranks
        top = np.argsort(-s, axis=1)[:, :K]
        listed = np.isfinite(np.take_along_axis(s, top, axis=1))  # a served answer may hold fewer than K
        tops.extend(t[keep].tolist() for t, keep in zip(top, listed, strict=True))

    rows = np.arange(len(h.users))
    result = evaluate_full_ranking(fn, rows, np.asarray(h.targets), h.exclusions(), K, 128, on_scores=top_k)
    metrics = result.as_dict()
    metrics["coverage@10"] = catalogue_coverage(tops, len(h.items))
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    log.info("%s: %s", name, metrics)
    curve = result.curve([k for k in CURVE_KS if k <= max(len(h.items), 1)] or [1])
    return metrics, curve


def evaluate_served(
    name: str, full: ScoreFn, h: Holdout, settings: ServedListSettings, lists: list[np.ndarray] | None
) -> dict[str, float]:
    """``served_``-prefixed @K metrics of the answers :func:`served_scores` builds, and for a model version
    the share of cases whose target is among its candidates (``candidate_recall``: no ranking can do better)."""
    metrics, _ = evaluate(f"{name} served", served_scores(full, h, settings, lists), h)
    out = {f"served_{key}": value for key, value in metrics.items() if key.endswith(f"@{K}")}
    if lists is not None:
        hits = [t in set(c.tolist()) for c, t in zip(lists, h.targets, strict=True)]
        out["candidate_recall"] = round(float(np.mean(hits)) if hits else 0.0, 4)
        out["candidates"] = round(float(np.mean([len(c) for c in lists])) if lists else 0.0, 1)
    return out


def evaluate_version(
    repository: Path, version: int, champion: int | None, h: Holdout, settings: ServedListSettings | None = None
) -> EvaluationReport:
    """Every model on the same holdout: its full ranking of the catalogue (``ndcg@10`` and the curves), and the
    answers it would serve (``served_ndcg@10``, ...: candidates, ranking and the category cap as the ranker)."""
    settings = settings or ServedListSettings()
    scorer = OnnxRuntimeScorer(repository)
    runs: dict[str, tuple[dict[str, float], RankingCurve]] = {}
    for name, baseline in (("popularity", Popularity()), ("item_cf", ItemKNN(k=100))):
        fn = _baseline_scores(h, baseline)
        metrics, curve = evaluate(name, fn, h)
        runs[name] = ({**metrics, **evaluate_served(name, fn, h, settings, None)}, curve)
    for v in (version, champion):
        if v is None or f"model_v{v}" in runs:
            continue
        try:
            model = ModelVersion.load(repository, v)  # once: its ranking model, ANN and neighbours
            fn = model_scores(repository, v, h, scorer, model)
            metrics, curve = evaluate(f"model_v{v}", fn, h)
        except Exception as exc:
            if v == version:
                raise
            log.warning("champion %d could not be evaluated: %s", v, exc)  # it loses its seat
            continue
        try:
            lists = served_candidates(repository, v, h, scorer, settings, model)
            metrics.update(evaluate_served(f"model_v{v}", fn, h, settings, lists))
        except Exception as exc:
            if v == version:
                raise
            # Its full ranking stands; a gate on a served metric cannot compare and promotes nothing.
            log.warning("champion %d: its served lists could not be measured: %s", v, exc)
        runs[f"model_v{v}"] = (metrics, curve)
    return EvaluationReport(
        users=len(h.users),
        items=len(h.items),
        k=K,
        models={name: metrics for name, (metrics, _) in runs.items()},
        curves={name: curve for name, (_, curve) in runs.items()},
    )
