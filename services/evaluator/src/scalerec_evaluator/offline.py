"""Offline evaluation of a model version against the champion and the baselines, on the same holdout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_metrics import catalogue_coverage, evaluate_full_ranking
from scalerec_models import repository as repo
from scalerec_models.runtime import ModelVersion
from scalerec_evaluator.holdout import Holdout

log = logging.getLogger(__name__)

K = 10
ScoreFn = Callable[[np.ndarray], np.ndarray]


def popularity_scores(h: Holdout) -> ScoreFn:
    pop = np.array([h.popularity.get(i, 0) for i in h.items], dtype=np.float64)

    def score(rows: np.ndarray) -> np.ndarray:
        return np.tile(pop, (len(rows), 1))

    return score


def item_cf_scores(h: Holdout) -> ScoreFn:
    """Cosine item-item co-occurrence over the past; a user's score sums its history items' similarities."""
    users = list(h.past_items)
    uidx = {u: n for n, u in enumerate(users)}
    rows, cols = [], []
    for u, its in h.past_items.items():
        for i in its:
            if i in h.index:
                rows.append(uidx[u])
                cols.append(h.index[i])
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(max(1, len(users)), len(h.items)))
    co = (x.T @ x).tocsr().astype(np.float64)
    norms = np.sqrt(np.asarray(co.diagonal()).clip(min=1e-9))
    co = sparse.diags(1 / norms) @ co @ sparse.diags(1 / norms)
    co.setdiag(0)
    co = co.tocsr()

    def score(case_rows: np.ndarray) -> np.ndarray:
        hist = sparse.lil_matrix((len(case_rows), len(h.items)))
        for n, c in enumerate(case_rows):
            for it in h.histories[int(c)][-20:]:
                if it in h.index:
                    hist[n, h.index[it]] = 1.0
        return np.asarray((hist.tocsr() @ co).todense())

    return score


def model_scores(repository: Path, version: int, h: Holdout, scorer: OnnxRuntimeScorer) -> ScoreFn:
    import asyncio

    model = ModelVersion.load(repository, version)
    features = np.asarray(h.features, dtype=np.int64)

    def score(case_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(case_rows), len(h.items)), dtype=np.float64)
        for start in range(0, len(case_rows), 16):
            batch = [int(c) for c in case_rows[start : start + 16]]
            inputs = model.encode(
                [h.histories[c] for c in batch], [h.contexts[c] for c in batch],
                [h.items] * len(batch), [features] * len(batch),
            )
            res = asyncio.run(scorer.infer(repo.RANKER_MODEL, version, inputs, ["scores"]))
            out[start : start + len(batch)] = res["scores"][:, : len(h.items)]
        return out

    return score


def evaluate(name: str, fn: ScoreFn, h: Holdout) -> dict[str, float]:
    started = time.perf_counter()
    rows = np.arange(len(h.users))
    result = evaluate_full_ranking(fn, rows, np.asarray(h.targets), h.exclusions(), k=K, batch_size=128)
    metrics = result.as_dict()
    # Coverage: the share of the catalogue that appears in someone's top K.
    tops = []
    for start in range(0, len(rows), 128):
        s = fn(rows[start : start + 128])
        tops.extend(np.argsort(-s, axis=1)[:, :K].tolist())
    metrics["coverage@10"] = catalogue_coverage(tops, len(h.items))
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    log.info("%s: %s", name, metrics)
    return metrics


def evaluate_version(repository: Path, version: int, champion: int | None, h: Holdout) -> dict[str, Any]:
    scorer = OnnxRuntimeScorer(repository)
    models: dict[str, dict[str, float]] = {
        "popularity": evaluate("popularity", popularity_scores(h), h),
        "item_cf": evaluate("item_cf", item_cf_scores(h), h),
        f"model_v{version}": evaluate(f"model_v{version}", model_scores(repository, version, h, scorer), h),
    }
    if champion is not None and champion != version:
        try:
            models[f"model_v{champion}"] = evaluate(
                f"model_v{champion}", model_scores(repository, champion, h, scorer), h
            )
        except Exception as exc:  # a champion that cannot be scored any more loses its seat
            log.warning("champion %d could not be evaluated: %s", champion, exc)
    return {"users": len(h.users), "items": len(h.items), "k": K, "models": models}
