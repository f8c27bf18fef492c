"""One training run: examples from the store → models → a new Triton model version → announcement.

Runs in a worker thread (CPU/GPU heavy); everything here is synchronous.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scalerec_adapters.store import WideColumnStore
from scalerec_features import FEATURE_VERSION
from scalerec_models import repository as repo
from scalerec_storage import records as r
from scalerec_storage.windows import DataWindow, data_window
from scalerec_trainer.config import TrainerSettings

log = logging.getLogger(__name__)


class NotEnoughData(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainOutcome:
    version: int
    card: dict[str, Any]
    seconds: float


def load_training_data(store: WideColumnStore, window: DataWindow) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Examples strictly before the holdout, and the catalogue's content features (point in time)."""
    records = [
        {
            "user_id": ex.user_id,
            "item_id": ex.item_id,
            "ts_ms": ex.ts_ms,
            "type": ex.type.value,
            "value": ex.value,
            "context": [ex.context.get(k, 0) for k in ("hour", "weekday", "device", "locale")],
        }
        for ex in r.scan_examples(store)
        if ex.ts_ms < window.end_ms
    ]
    features = {item.item_id: feats for item, feats in r.scan_catalogue(store)}
    return records, features


def train_version(settings: TrainerSettings, store: WideColumnStore) -> TrainOutcome:
    from scalerec_models.api import export_models, train_models  # torch: imported only when training

    started = time.perf_counter()
    window = data_window(store, settings.holdout_fraction)
    if window is None or window.examples < settings.min_examples:
        have = 0 if window is None else window.examples
        raise NotEnoughData(f"{have} training examples in the store; at least {settings.min_examples} are needed")
    records, item_features = load_training_data(store, window)
    if len(records) < settings.min_examples:
        raise NotEnoughData(f"{len(records)} examples before the holdout; at least {settings.min_examples} needed")
    repository = Path(settings.model_repository)
    champion = repo.read_champion(repository, repo.RANKER_MODEL)
    warm_start = repository / repo.RANKER_MODEL / str(champion) if champion else None
    overrides: dict[str, Any] = {"seed": settings.seed}
    if settings.max_epochs:
        overrides["epochs"] = settings.max_epochs
    log.info("training on %d examples (%s), warm start from %s", len(records), window, warm_start)
    trained = train_models(
        records, item_features, size=settings.model_size, overrides=overrides, warm_start_dir=warm_start,
        device=settings.device, progress=True,
    )
    with tempfile.TemporaryDirectory(prefix="scalerec-train-") as tmp:
        files = export_models(trained, Path(tmp))
        card = {
            "metrics": trained.metrics,
            "data_window": window.to_card(),
            "feature_version": FEATURE_VERSION,
            "model_size": settings.model_size,
            "warm_start_version": champion,
            "trained_at": datetime.now(UTC).isoformat(),
            "train_seconds": round(time.perf_counter() - started, 2),
        }
        extras = {name: path for name, path in files.items() if name not in ("ranker.onnx", "user_tower.onnx")}
        version = repo.next_version(repository, repo.RANKER_MODEL)
        repo.write_model_version(
            repository, repo.USER_TOWER_MODEL, files["user_tower.onnx"], card=card, extra_files=extras, version=version
        )
        # The ranker version is written last: its appearance is what makes the version complete.
        repo.write_model_version(
            repository, repo.RANKER_MODEL, files["ranker.onnx"], card=card, extra_files=extras, version=version
        )
    seconds = time.perf_counter() - started
    log.info("wrote model version %d in %.1fs: %s", version, seconds, trained.metrics)
    return TrainOutcome(version=version, card=card, seconds=seconds)
