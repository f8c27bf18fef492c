"""The trainer's high-level API (torch): train both neural models, export a version folder.

::

    from scalerec_models.pipeline import train_models, export
    trained = train_models(interactions, item_features, model_config("small"), warm_start_dir=None)
    paths = export(trained, out_dir)   # ranker.onnx, user_tower.onnx, item_embeddings.npy, vocab.json, config.json, ...

``interactions`` is a :class:`~scalerec_models.data.Interactions` (one row per
event: user_id, item_id, ts_ms, type, value, context); ``item_features`` maps
item id -> ``item_feature_vector(...)`` for the catalogue, including items
nobody has touched yet (they get an index and are ranked by content).

Each user's last event is held out for early stopping and for the metrics
that go on the model card (leave-one-out, full ranking).  ``warm_start_dir``
is a previous export: its weights seed the new models and its item indices
are kept, so continuous training is incremental and embeddings stay comparable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scalerec_models.bundle import (
    CANDIDATE_GRAPH_FILES,
    CONFIG_FILE,
    ITEM_EMBEDDINGS_FILE,
    ITEM_FEATURES_FILE,
    RANKER_FILE,
    USER_TOWER_FILE,
    VOCAB_FILE,
    ModelBundle,
)
from scalerec_models.config import ModelConfig, model_config
from scalerec_models.data import FIRST_ITEM, Interactions, ItemVocab, leave_one_out, to_sequences
from scalerec_models.networks import SeqRanker, TwoTower
from scalerec_models.onnx_export import (
    candidate_graphs_parity,
    export_candidate_graphs,
    export_ranker,
    export_user_tower,
    ranker_parity,
    user_tower_parity,
)
from scalerec_models.training import EpochCallback, EpochRecord, evaluate_model, train_ranker, train_two_tower

log = logging.getLogger(__name__)

RANKER_WEIGHTS = "ranker.pt"
TWO_TOWER_WEIGHTS = "two_tower.pt"
METRICS_FILE = "metrics.json"
PARITY_TOLERANCE = 1e-5


@dataclass
class TrainedModels:
    config: ModelConfig
    vocab: ItemVocab
    item_features: np.ndarray  # [V, 10] by item index
    ranker: SeqRanker
    two_tower: TwoTower
    metrics: dict[str, float] = field(default_factory=dict)
    # Per model ("ranker", "two_tower"), one record per epoch: the card's ``training_history``.
    history: dict[str, list[EpochRecord]] = field(default_factory=dict)


def _vocab_for(
    interactions: Interactions,
    item_features: Mapping[str, Sequence[int]] | None,
    cfg: ModelConfig,
    previous: ItemVocab | None,
) -> ItemVocab:
    if cfg.item_buckets:
        return ItemVocab(buckets=cfg.item_buckets)
    items = list(previous.items) if previous and not previous.buckets else []
    known = set(items)
    fresh = sorted({str(i) for i in interactions.item_id} | set(item_features or {}))
    return ItemVocab(items + [i for i in fresh if i not in known])


def _load_grown(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a previous state, copying the overlapping rows of tables that grew with the vocabulary."""
    own = model.state_dict()
    for name, old in state.items():
        if name not in own:
            continue
        new = own[name]
        if new.shape == old.shape:
            new.copy_(old)
        elif new.dim() == old.dim() and new.shape[1:] == old.shape[1:]:
            rows = min(new.shape[0], old.shape[0])
            new[:rows].copy_(old[:rows])
    model.load_state_dict(own)


def train_models(
    interactions: Interactions,
    item_features: Mapping[str, Sequence[int]] | None = None,
    config: ModelConfig | None = None,
    warm_start_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> TrainedModels:
    """Train the ranker and the two-tower model; returns them with holdout metrics.

    Needs at least one user with two events.  Users with three or more events
    lend their last one to the holdout (early stopping + metrics).
    """
    cfg = config or model_config("small")
    torch.manual_seed(cfg.seed)
    previous = None
    if warm_start_dir is not None and (Path(warm_start_dir) / VOCAB_FILE).exists():
        previous = ItemVocab.load(Path(warm_start_dir) / VOCAB_FILE)
    vocab = _vocab_for(interactions, item_features, cfg, previous)
    split = leave_one_out(interactions, item_features, vocab=vocab)
    features = split.item_features
    t0 = time.perf_counter()
    ranker = SeqRanker(cfg, vocab.size, torch.from_numpy(features))
    tower = TwoTower(cfg, vocab.size, torch.from_numpy(features))
    if warm_start_dir is not None:
        for model, file in ((ranker, RANKER_WEIGHTS), (tower, TWO_TOWER_WEIGHTS)):
            path = Path(warm_start_dir) / file
            if path.exists():
                _load_grown(model, torch.load(path, map_location="cpu", weights_only=True))
                log.info("warm start %s from %s", file, path)
    has_holdout = len(split.eval_users) > 0
    source = split if has_holdout else to_sequences(interactions, vocab)
    ranker, r_info = train_ranker(source, vocab.size, features, cfg, progress=progress, init=ranker, on_epoch=on_epoch)
    tower, t_info = train_two_tower(source, vocab.size, features, cfg, progress=progress, init=tower, on_epoch=on_epoch)
    metrics: dict[str, float] = {
        "train_seconds": time.perf_counter() - t0,
        "users": float(len(split.train.users)),
        "items": float(vocab.size - FIRST_ITEM),
        "events": float(len(interactions)),
    }
    if has_holdout:
        for name, model in (("ranker", ranker), ("two_tower", tower)):
            for k, v in evaluate_model(model, split, "test", cfg.max_len).items():
                metrics[f"{name}.{k}"] = v
        metrics["ranker.best_epoch"] = r_info["best_epoch"]
        metrics["two_tower.best_epoch"] = t_info["best_epoch"]
    history = {"ranker": r_info["history"], "two_tower": t_info["history"]}
    return TrainedModels(cfg, vocab, features, ranker, tower, metrics, history)


@torch.no_grad()
def item_embeddings(tower: TwoTower, chunk: int = 65536) -> np.ndarray:
    """[V, D] float32 item-tower vectors, computed a chunk at a time (hashed tables are large)."""
    tower.eval()
    n = tower.item_encoder.id.num_embeddings
    return np.concatenate([tower.all_items(s, min(n, s + chunk)).numpy() for s in range(0, n, chunk)])


def export(trained: TrainedModels, out_dir: str | Path, verify: bool = True) -> dict[str, Path]:
    """Write a self-contained version folder; with ``verify``, fail if ONNX and torch disagree by > 1e-5."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = trained.config
    paths = {
        "ranker": export_ranker(trained.ranker, out / RANKER_FILE),
        "user_tower": export_user_tower(trained.two_tower, cfg.history_len, out / USER_TOWER_FILE),
        **export_candidate_graphs(trained.ranker, trained.two_tower, out),
    }
    np.save(out / ITEM_EMBEDDINGS_FILE, item_embeddings(trained.two_tower))
    np.save(out / ITEM_FEATURES_FILE, trained.item_features)
    trained.vocab.save(out / VOCAB_FILE)
    cfg.save(out / CONFIG_FILE)
    torch.save(trained.ranker.state_dict(), out / RANKER_WEIGHTS)
    torch.save(trained.two_tower.state_dict(), out / TWO_TOWER_WEIGHTS)
    (out / METRICS_FILE).write_text(json.dumps(trained.metrics, indent=2))
    paths.update(
        {
            "item_embeddings": out / ITEM_EMBEDDINGS_FILE,
            "item_features": out / ITEM_FEATURES_FILE,
            "vocab": out / VOCAB_FILE,
            "config": out / CONFIG_FILE,
            "ranker_weights": out / RANKER_WEIGHTS,
            "two_tower_weights": out / TWO_TOWER_WEIGHTS,
            "metrics": out / METRICS_FILE,
        }
    )
    if verify:
        diffs = check_parity(trained, out)
        bad = {k: v for k, v in diffs.items() if not v <= PARITY_TOLERANCE}
        if bad:
            raise RuntimeError(f"ONNX export of {out} disagrees with torch: {bad} (tolerance {PARITY_TOLERANCE})")
    return paths


def check_parity(trained: TrainedModels, out_dir: str | Path, batch: int = 4, n: int = 16) -> dict[str, float]:
    """Max abs difference torch vs onnxruntime on inputs built by the serving-side ModelBundle."""
    bundle = ModelBundle(out_dir)
    rng = np.random.default_rng(0)
    known = trained.vocab.items or [f"item-{i}" for i in range(50)]
    hist = [
        list(rng.choice(known, size=int(rng.integers(0, 2 * trained.config.history_len + 1)))) for _ in range(batch)
    ]
    hist[0] = []
    ctx = [
        [int(rng.integers(24)), int(rng.integers(7)), int(rng.integers(6)), int(rng.integers(64))] for _ in range(batch)
    ]
    cands = [[*rng.choice(known, size=n - 1).tolist(), "a-brand-new-item"] for _ in range(batch)]
    cands[-1] = cands[-1][: n // 2]
    inputs = bundle.ranker_inputs(hist, ctx, cands)
    diffs = {
        "ranker": ranker_parity(trained.ranker, Path(out_dir) / RANKER_FILE, inputs),
        "user_tower": user_tower_parity(
            trained.two_tower, Path(out_dir) / USER_TOWER_FILE, bundle.user_tower_inputs(hist, ctx)
        ),
    }
    if all((Path(out_dir) / f).exists() for f in CANDIDATE_GRAPH_FILES):
        diffs.update(candidate_graphs_parity(trained.ranker, trained.two_tower, out_dir, inputs))
    return diffs
