"""Offline comparison of every model under one leave-one-out protocol (``scalerec eval-dataset``).

Protocol: every rating/interaction is implicit feedback; each user's events are
sorted by time (ties keep file order); the last one is the test item, the
second-to-last the validation item (hyper-parameters and early stopping only);
every item of the catalogue is ranked, the user's other known items are
excluded, and ties count against the model.  For the test ranking each model
sees the validation item as part of the history (baselines are refit on it,
BPR is retrained on it for the chosen number of epochs).

Torch is imported only when a neural model (two-tower, sequential) runs; ``implicit`` only for BPR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scalerec_metrics import evaluate_full_ranking

from scalerec_models.baselines import ItemKNN, Popularity, UserKNN
from scalerec_models.candidates import first_occurrences, recent_seeds
from scalerec_models.config import ModelConfig, model_config
from scalerec_models.data import FIRST_ITEM, LeaveOneOut
from scalerec_models.runtime import NEIGHBOURS_PER_ITEM

if TYPE_CHECKING:  # torch is imported lazily: the baselines run without it
    from scalerec_models.training import TrainInfo

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


def _val_ndcg(split: LeaveOneOut, model: Any, train_h: Sequence[np.ndarray]) -> float:
    sc = model.score([train_h[r] for r in split.eval_users])
    return _evaluate(split, "val", _rows_of(sc))[f"ndcg@{K}"]


def _test_metrics(split: LeaveOneOut, model: Any, test_h: Sequence[np.ndarray]) -> dict[str, float]:
    sc = model.score([test_h[r] for r in split.eval_users])
    return _evaluate(split, "test", _rows_of(sc))


def _tune_knn(split: LeaveOneOut, make: Callable[[Any], Any], grid: Sequence[Any]) -> tuple[dict[str, float], Any]:
    """Pick the grid value with the best validation NDCG, refit on train+validation, score the test item."""
    train_h = _stage_histories(split, "val")
    best, best_p = -1.0, grid[0]
    for p in grid:
        ndcg = _val_ndcg(split, make(p).fit(train_h, split.n_items), train_h)
        log.info("  %s %s: val ndcg@10 %.4f", type(make(p)).__name__, p, ndcg)
        if ndcg > best:
            best, best_p = ndcg, p
    test_h = _stage_histories(split, "test")
    return _test_metrics(split, make(best_p).fit(test_h, split.n_items), test_h) | {"val_ndcg@10": best}, best_p


def run_popularity(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    m, _ = _tune_knn(split, lambda _: Popularity(), [None])
    return m, {}


# The usual ItemKNN grid (e.g. Dacrema et al., RecSys 2019): neighbours up to 500, shrink 0-100, TF-IDF or not;
# k from 2, since on MovieLens-small the smallest neighbourhoods win (k=5: the optimum lies inside the grid).
ITEM_CF_K = (2, 3, 5, 7, 10, 20, 50, 100, 200, 500)
ITEM_CF_SHRINK = (0.0, 10.0, 50.0, 100.0)


def run_item_cf(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Every (k, shrink, idf) of the grid on validation; one similarity pass per (shrink, idf) serves all k."""
    train_h = _stage_histories(split, "val")
    best = -1.0
    best_p: tuple[int | None, float, bool] = (ITEM_CF_K[0], ITEM_CF_SHRINK[0], False)
    for idf in (False, True):
        for shrink in ITEM_CF_SHRINK:
            fitted = ItemKNN(shrink=shrink, idf=idf).fit_neighbours(train_h, split.n_items, ITEM_CF_K)
            for k, model in fitted.items():
                ndcg = _val_ndcg(split, model, train_h)
                log.info("  item-cf k=%s shrink=%g idf=%s: val ndcg@10 %.4f", k, shrink, idf, ndcg)
                if ndcg > best:
                    best, best_p = ndcg, (k, shrink, idf)
    k, shrink, idf = best_p
    test_h = _stage_histories(split, "test")
    m = _test_metrics(split, ItemKNN(k=k, shrink=shrink, idf=idf).fit(test_h, split.n_items), test_h)
    grid = {"k": list(ITEM_CF_K), "shrink": list(ITEM_CF_SHRINK), "idf": [False, True]}
    return m | {"val_ndcg@10": best}, {"k": k, "shrink": shrink, "idf": idf, "grid": grid}


def run_user_cf(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    m, k = _tune_knn(split, lambda p: UserKNN(k=p), [10, 30, 100])
    return m, {"k": k}


# BPR-MF (implicit's SGD) grid: dimension x learning rate x L2 regularisation, each early-stopped on validation
# NDCG@10, checked every BPR_EVERY epochs (patience: cfg.patience checks).
BPR_DIM = (64, 128)
BPR_LR = (0.005, 0.01, 0.05)
BPR_REG = (0.01, 0.03)
BPR_MAX_EPOCHS = 300
BPR_EVERY = 5


def run_bpr(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from scalerec_models.bpr import BPRModel

    train_h = _stage_histories(split, "val")
    rows = split.eval_users
    best, best_p, best_epochs = -1.0, (BPR_LR[0], BPR_REG[0], BPR_DIM[0]), 1
    for dim in BPR_DIM:
        for lr in BPR_LR:
            for reg in BPR_REG:
                bpr = BPRModel(split.n_items, dim=dim, reg=reg, lr=lr, seed=cfg.seed)
                epochs, ndcg = bpr.fit(
                    train_h,
                    epochs=BPR_MAX_EPOCHS,
                    patience=cfg.patience,
                    every=BPR_EVERY,
                    validate=lambda b: _evaluate(split, "val", lambda u: b.scores(rows[u]))[f"ndcg@{K}"],
                )
                log.info("  BPR dim %d lr %g reg %g: val ndcg@10 %.4f after %d epochs", dim, lr, reg, ndcg, epochs)
                if ndcg > best:
                    best, best_p, best_epochs = ndcg, (lr, reg, dim), epochs
    lr, reg, dim = best_p
    # Retrained with the validation item for the chosen number of epochs (no early stopping: no holdout left).
    bpr = BPRModel(split.n_items, dim=dim, reg=reg, lr=lr, seed=cfg.seed)
    bpr.fit(_stage_histories(split, "test"), epochs=best_epochs)
    m = _evaluate(split, "test", lambda u: bpr.scores(rows[u])) | {"val_ndcg@10": best}
    grid = {
        "lr": list(BPR_LR),
        "reg": list(BPR_REG),
        "dim": list(BPR_DIM),
        "max_epochs": BPR_MAX_EPOCHS,
        "validate_every": BPR_EVERY,
    }
    return m, {"dim": dim, "lr": lr, "reg": reg, "epochs": best_epochs, "seed": cfg.seed, "grid": grid}


def _epochs(info: TrainInfo, max_epochs: int, cfg: ModelConfig) -> dict[str, Any]:
    """How a neural model's training ended: best epoch, epochs run, the fixed maximum, seed."""
    return {
        "epochs": int(info["best_epoch"]),
        "epochs_run": int(info["epochs_run"]),
        "max_epochs": max_epochs,
        "patience": cfg.patience,
        "lr_schedule": cfg.lr_schedule,
        "seed": cfg.seed,
    }


def run_two_tower(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from scalerec_models.training import evaluate_model, train_two_tower

    model, info = train_two_tower(split, split.n_items, split.item_features, cfg, progress=True)
    m = evaluate_model(model, split, "test", cfg.max_len) | {"val_ndcg@10": info["val_ndcg@10"]}
    recall = candidate_recall(split, cfg, model)
    log.info("  candidate recall@%d on validation: %s", CANDIDATES_K, recall)
    return m, {
        "dim": cfg.tower_dim,
        **_epochs(info, cfg.tower_epochs, cfg),
        f"candidates_recall@{CANDIDATES_K}_val": recall,
    }


def run_sequential(split: LeaveOneOut, cfg: ModelConfig) -> tuple[dict[str, float], dict[str, Any]]:
    from scalerec_models.training import evaluate_model, train_ranker

    model, info = train_ranker(split, split.n_items, split.item_features, cfg, progress=True)
    return evaluate_model(model, split, "test", cfg.max_len) | {"val_ndcg@10": info["val_ndcg@10"]}, {
        "dim": cfg.dim,
        "layers": cfg.layers,
        "max_len": cfg.max_len,
        "label_smoothing": cfg.label_smoothing,
        **_epochs(info, cfg.epochs, cfg),
    }


# ---------------------------------------------------------------- candidate generators

CANDIDATES_K = 100


def _top(scores: np.ndarray, blocked: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Per row, the k best columns (best first) not in the row's blocked items (ties to the lower index)."""
    scores = scores.copy()
    scores[:, :FIRST_ITEM] = -np.inf
    out = []
    for r, ex in enumerate(blocked):
        row = scores[r]
        row[ex] = -np.inf
        top = np.argsort(-row, kind="stable")[:k]
        out.append(top[np.isfinite(row[top])])
    return out


def candidate_recall(split: LeaveOneOut, cfg: ModelConfig, tower: Any, k: int = CANDIDATES_K) -> dict[str, float]:
    """Recall@k on the validation item of each candidate generator the ranker uses, and of their union.

    The ranker can only rank what its generators return, so this bounds what any ranking model can
    reach.  retrieval: the two-tower's user vector against every item vector (exact inner product,
    as faiss below 200k items); item-CF: neighbours of the 10 most recent distinct items, each scored
    by its best seed discounted by recency; trending: most interacted items of the training data (the
    ranker's all-time fallback for trending); fresh: the items whose first training event is the newest.
    The user's own items are never candidates, as in serving.
    """
    from scalerec_models.training import score_all

    hist = split.histories("val")
    blocked = [np.unique(h) for h in hist]
    lists: dict[str, list[np.ndarray]] = {}
    lists["retrieval"] = _top(score_all(tower, hist, split.contexts("val"), cfg.max_len), blocked, k)
    knn = ItemKNN(k=NEIGHBOURS_PER_ITEM).fit(list(split.train.items), split.n_items)
    assert knn.sim is not None
    cf = []
    for h, ex in zip(hist, blocked, strict=True):
        recent = recent_seeds(h, first_occurrences)
        weights = np.zeros(split.n_items, np.float32)
        weights[recent] = 1.0 / (1.0 + np.arange(len(recent), dtype=np.float32))
        # Each neighbour scored by its best seed: max over seeds of sim(seed, j) / (1 + recency rank).
        sub = knn.sim[recent].multiply(weights[recent][:, None]).tocsc()
        best = np.asarray(sub.max(axis=0).todense()).ravel() if len(recent) else np.zeros(split.n_items)
        best[best <= 0] = -np.inf
        cf.append(_top(best[None, :], [ex], k)[0])
    lists["item-cf"] = cf
    lists["trending"] = [_top(split.popularity[None, :], [ex], k)[0] for ex in blocked]
    seen = split.first_seen < np.iinfo(np.int64).max
    newest = np.where(seen, split.first_seen.astype(np.float64), -np.inf)[None, :]
    lists["fresh"] = [_top(newest, [ex], k)[0] for ex in blocked]
    lists["union"] = [np.unique(np.concatenate(parts)) for parts in zip(*lists.values(), strict=True)]
    targets = split.targets("val")
    out = {
        name: float(np.mean([t in set(c.tolist()) for c, t in zip(cands, targets, strict=True)]))
        for name, cands in lists.items()
    }
    out["union_size"] = float(np.mean([len(c) for c in lists["union"]]))
    return {key: round(v, 4) for key, v in out.items()}


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
