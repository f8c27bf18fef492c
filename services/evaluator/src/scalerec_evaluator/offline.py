"""Offline evaluation of a model version against the champion and the baselines, on the same holdout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_metrics import RankingCurve, catalogue_coverage, evaluate_full_ranking
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


def model_scores(repository: Path, version: int, h: Holdout, scorer: OnnxRuntimeScorer) -> ScoreFn:
    import asyncio

    model = ModelVersion.load(repository, version)

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


def evaluate(name: str, fn: ScoreFn, h: Holdout) -> tuple[dict[str, float], RankingCurve]:
    """The @K metrics the gate reads, and HR/NDCG at every cut-off of ``CURVE_KS`` from the same ranks."""
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
    curve = result.curve([k for k in CURVE_KS if k <= max(len(h.items), 1)] or [1])
    return metrics, curve


def evaluate_version(repository: Path, version: int, champion: int | None, h: Holdout) -> EvaluationReport:
    scorer = OnnxRuntimeScorer(repository)
    runs: dict[str, tuple[dict[str, float], RankingCurve]] = {
        "popularity": evaluate("popularity", _baseline_scores(h, Popularity()), h),
        "item_cf": evaluate("item_cf", _baseline_scores(h, ItemKNN(k=100)), h),
        f"model_v{version}": evaluate(f"model_v{version}", model_scores(repository, version, h, scorer), h),
    }
    if champion is not None and champion != version:
        try:
            runs[f"model_v{champion}"] = evaluate(
                f"model_v{champion}", model_scores(repository, champion, h, scorer), h
            )
        except Exception as exc:  # a champion that cannot be scored any more loses its seat
            log.warning("champion %d could not be evaluated: %s", champion, exc)
    return EvaluationReport(
        users=len(h.users),
        items=len(h.items),
        k=K,
        models={name: metrics for name, (metrics, _) in runs.items()},
        curves={name: curve for name, (_, curve) in runs.items()},
    )
