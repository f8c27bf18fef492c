"""Offline comparison of every model under one leave-one-out protocol (``scalerec eval-dataset``).

Protocol: every rating/interaction is implicit feedback; each user's events are
sorted by time (ties keep file order); the last one is the test item, the
second-to-last the validation item (hyper-parameters and early stopping only);
every item of the catalogue is ranked, the user's other known items are
excluded, and ties count against the model.  For the test ranking each model
sees the validation item as part of the history (baselines are refit on it,
BPR is retrained on it for the chosen number of epochs).

Torch is imported only when a neural model (bpr, two-tower, sequential) runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scalerec_metrics import evaluate_full_ranking

from scalerec_models.baselines import ItemKNN, Popularity, UserKNN
from scalerec_models.config import ModelConfig, model_config
from scalerec_models.data import LeaveOneOut

log = logging.getLogger(__name__)

MODELS = ("popularity", "item-cf", "user-cf", "bpr", "two-tower", "sequential")
PROTOCOL = (
    "leave-one-out: per user, last interaction = test, second-to-last = validation (tuning/early stopping); "
    "full ranking over all items, the user's other known items excluded, ties counted against the model"
)
K = 10


@dataclass
class ModelResult:
    name: str
    metrics: dict[str, float]
    train_seconds: float
    params: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            f"hr@{K}": self.metrics[f"hr@{K}"],
            f"ndcg@{K}": self.metrics[f"ndcg@{K}"],
            "mrr": self.metrics["mrr"],
            "train_seconds": round(self.train_seconds, 2),
            "params": self.params,
        }


def _evaluate(split: LeaveOneOut, stage: str, scores: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    users = np.arange(len(split.eval_users))
    return evaluate_full_ranking(scores, users, split.targets(stage), split.exclusions(stage), k=K).as_dict()


def _stage_histories(split: LeaveOneOut, stage: str) -> list[np.ndarray]:
    """Every user's history for a stage (users without a holdout keep all their events)."""
    hist = list(split.train.items)
    if stage == "test":
        for j, row in enumerate(split.eval_users):
            hist[row] = np.r_[hist[row], split.val_target[j]]
    return hist


def _tune_knn(split: LeaveOneOut, make: Callable[[Any], Any], grid: Sequence[Any]) -> tuple[dict[str, float], Any]:
    """Pick the grid value with the best validation NDCG, refit on train+validation, score the test item."""
    train_h = _stage_histories(split, "val")
    test_h = _stage_histories(split, "test")
    rows = split.eval_users
    best, best_p = -1.0, grid[0]
    for p in grid:
        model = make(p).fit(train_h, split.n_items)
        sc = model.score([train_h[r] for r in rows])
        ndcg = _evaluate(split, "val", _rows_of(sc))[f"ndcg@{K}"]
        log.info("  %s %s: val ndcg@10 %.4f", type(model).__name__, p, ndcg)
        if ndcg > best:
            best, best_p = ndcg, p
    model = make(best_p).fit(test_h, split.n_items)
    sc = model.score([test_h[r] for r in rows])
    return _evaluate(split, "test", lambda u: sc[u]) | {"val_ndcg@10": best}, best_p


def run_popularity(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    m, _ = _tune_knn(split, lambda _: Popularity(), [None])
    return m, {}


def run_item_cf(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    grid = [(k, s) for k in (20, 50, 200) for s in (0.0, 20.0)]
    m, (k, s) = _tune_knn(split, lambda p: ItemKNN(k=p[0], shrink=p[1]), grid)
    return m, {"k": k, "shrink": s}


def run_user_cf(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    m, k = _tune_knn(split, lambda p: UserKNN(k=p), [10, 30, 100])
    return m, {"k": k}


def run_bpr(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    import torch

    from scalerec_models.training import BPRModel

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_h = _stage_histories(split, "val")
    rows = split.eval_users
    best, best_reg, best_epochs = -1.0, 0.0, 1
    for reg in (1e-3, 1e-2):
        bpr = BPRModel(split.n_items, dim=cfg.bpr_dim, reg=reg, seed=cfg.seed)
        epochs, ndcg = bpr.fit(
            train_h,
            epochs=100,
            patience=3,
            validate=lambda b: _evaluate(split, "val", lambda u: b.scores(rows[u]))[f"ndcg@{K}"],
        )
        log.info("  BPR reg %g: val ndcg@10 %.4f after %d epochs", reg, ndcg, epochs)
        if ndcg > best:
            best, best_reg, best_epochs = ndcg, reg, epochs
    bpr = BPRModel(split.n_items, dim=cfg.bpr_dim, reg=best_reg, seed=cfg.seed)
    bpr.fit(_stage_histories(split, "test"), epochs=best_epochs)
    m = _evaluate(split, "test", lambda u: bpr.scores(rows[u])) | {"val_ndcg@10": best}
    return m, {"dim": cfg.bpr_dim, "reg": best_reg, "epochs": best_epochs}


def run_two_tower(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from scalerec_models.training import evaluate_model, train_two_tower

    model, info = train_two_tower(split, split.n_items, split.item_features, cfg, progress=True)
    return evaluate_model(model, split, "test", cfg.max_len) | {"val_ndcg@10": info["val_ndcg@10"]}, {
        "dim": cfg.tower_dim,
        "epochs": int(info["best_epoch"]),
    }


def run_sequential(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from scalerec_models.training import evaluate_model, train_ranker

    model, info = train_ranker(split, split.n_items, split.item_features, cfg, progress=True)
    return evaluate_model(model, split, "test", cfg.max_len) | {"val_ndcg@10": info["val_ndcg@10"]}, {
        "dim": cfg.dim,
        "layers": cfg.layers,
        "max_len": cfg.max_len,
        "epochs": int(info["best_epoch"]),
    }


RUNNERS: dict[str, Callable[[LeaveOneOut, ModelConfig], tuple[dict[str, float], dict[str, Any]]]] = {
    "popularity": run_popularity,
    "item-cf": run_item_cf,
    "user-cf": run_user_cf,
    "bpr": run_bpr,
    "two-tower": run_two_tower,
    "sequential": run_sequential,
}


def run_benchmark(
    split: LeaveOneOut,
    models: Sequence[str] = MODELS,
    cfg: ModelConfig | None = None,
    on_result: Callable[[ModelResult], None] | None = None,
) -> list[ModelResult]:
    """Train and evaluate each named model; ``on_result`` sees each result as soon as it is ready."""
    cfg = cfg or model_config("small")
    unknown = [m for m in models if m not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if len(split.eval_users) == 0:
        raise ValueError("no user has 3 or more interactions: leave-one-out needs train, validation and test items")
    results = []
    for name in models:
        t0 = time.perf_counter()
        metrics, params = RUNNERS[name](split, cfg)
        res = ModelResult(name, metrics, time.perf_counter() - t0, params)
        results.append(res)
        if on_result:
            on_result(res)
    return results


def _rows_of(scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A score function over user rows of a precomputed score matrix."""
    return lambda rows: scores[rows]
