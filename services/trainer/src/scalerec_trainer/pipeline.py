"""One training run: examples from the store → models → a new Triton model version → announcement.

Runs in a worker thread (CPU/GPU heavy); everything here is synchronous.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalerec_adapters.bus import Producer
from scalerec_adapters.store import WideColumnStore
from scalerec_core.service import available_cpus
from scalerec_core.telemetry import inject_headers
from scalerec_events.models import ModelAnnouncement
from scalerec_events.topics import Topic
from scalerec_features import FEATURE_VERSION, context_vector
from scalerec_models import repository as repo
from scalerec_models.bundle import CANDIDATE_GRAPH_FILES
from scalerec_models.runtime import NEIGHBORS_FILE, NEIGHBOURS_PER_ITEM
from scalerec_models.version_counter import VersionCounter, VersionCounterError, counter_from_setting
from scalerec_models.versions import RUN_MODELS, allocate_version, export_scratch, prune_versions
from scalerec_storage import records as r
from scalerec_storage.windows import DataWindow, data_window

from scalerec_trainer.config import TrainerSettings

if TYPE_CHECKING:
    from scalerec_models.data import Interactions
    from scalerec_models.training import EpochCallback

log = logging.getLogger(__name__)


class NotEnoughData(RuntimeError):
    pass


def write_item_neighbors(interactions: Any, vocab: Any, path: Path, k: int = NEIGHBOURS_PER_ITEM) -> Path:
    """Item-item CF neighbours (the ranker's ``item_cf`` candidates), fitted on the same training data."""
    import numpy as np
    from scalerec_models.baselines import ItemKNN
    from scalerec_models.data import to_sequences

    seqs = to_sequences(interactions, vocab)
    knn = ItemKNN(k=k).fit(seqs.items, vocab.size)
    sim = knn.sim.tocsr() if knn.sim is not None else None
    out: dict[str, list[tuple[str, float]]] = {}
    if sim is not None:
        for row in range(sim.shape[0]):
            item = vocab.item_id(row)
            start, end = sim.indptr[row], sim.indptr[row + 1]
            if item is None or start == end:
                continue
            cols, vals = sim.indices[start:end], sim.data[start:end]
            order = np.argsort(-vals)[:k]
            out[item] = [
                (vocab.item_id(int(cols[o])), round(float(vals[o]), 5))
                for o in order
                if vocab.item_id(int(cols[o])) is not None and vals[o] > 0
            ]
    path.write_text(json.dumps(out))
    return path


@dataclass(frozen=True)
class TrainOutcome:
    version: int
    card: dict[str, Any]
    seconds: float


def load_training_data(store: WideColumnStore, window: DataWindow) -> tuple[Interactions, dict[str, list[int]]]:
    """Examples strictly before the holdout, and the catalogue's content features (point in time).

    One streaming pass over the store: each example is parsed, appended to
    compact int arrays and dropped, so memory grows with ~40 bytes per event
    instead of a dict and a pydantic object per event.
    """
    from scalerec_models.data import InteractionsBuilder

    builder = InteractionsBuilder()
    for ex in r.scan_examples(store):
        if ex.ts_ms < window.end_ms:
            ctx = ex.context
            builder.add(ex.user_id, ex.item_id, ex.ts_ms, ex.type.value, ex.value, context_vector(ctx))
    features = {item.item_id: feats for item, feats in r.scan_catalogue(store)}
    return builder.build(), features


def omp_wait_policy(settings: TrainerSettings) -> None:
    """``OMP_WAIT_POLICY`` for torch's OpenMP threads, unless the environment has one: OpenMP reads it once,
    when torch loads.  Called on the main thread at start-up (setting a variable while other threads
    read the environment is not safe in C), and again by :func:`torch_threads` for in-process callers."""
    os.environ.setdefault("OMP_WAIT_POLICY", settings.omp_wait_policy.upper())


def torch_threads(settings: TrainerSettings) -> int:
    """Size torch's CPU thread pool for this process before it trains; -> the threads.

    Measured on a 2-core VM (docs/benchmarks.md, "Training on shared cores"): torch's OpenMP threads spin
    while they wait, so with another busy process on one of the cores an epoch of the demo's ranker took
    ~20x as long, and its time-budgeted training stopped after 2 of 24 epochs; with passive waiting it
    trained as fast as on idle cores.  The thread count is ``TRAIN_THREADS``, else torch's own default (the
    physical cores, or ``OMP_NUM_THREADS``, which torchrun sets to 1 per process) capped by the CPUs the
    process may use (the pod's CPU limit, not the node's) shared among torchrun's local processes.
    """
    omp_wait_policy(settings)
    import torch

    threads = settings.train_threads
    if not threads:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        threads = max(1, min(torch.get_num_threads(), available_cpus() // local))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def train_version(
    settings: TrainerSettings, store: WideColumnStore, on_epoch: EpochCallback | None = None
) -> TrainOutcome:
    """Train on the store's examples and write a model version; ``on_epoch`` hears of every epoch (rank 0).

    Under ``torchrun`` (process group initialised) every rank loads the data and
    trains its shard; rank 0 alone writes the version and every rank returns its outcome.
    """
    torch_threads(settings)
    # torch is imported only when training, never at service start.
    from scalerec_models import distributed as dd
    from scalerec_models.checkpoint import checkpoint_path
    from scalerec_models.config import model_config
    from scalerec_models.pipeline import train_models

    started = time.perf_counter()
    # Rank 0's window for everybody: ranks must train on the same rows (a moving store could differ).
    window = dd.broadcast_object(data_window(store, settings.holdout_fraction) if dd.is_main() else None)
    if window is None or window.examples < settings.min_examples:
        have = 0 if window is None else window.examples
        raise NotEnoughData(f"{have} training examples in the store; at least {settings.min_examples} are needed")
    interactions, item_features = load_training_data(store, window)
    if len(interactions) < settings.min_examples:
        raise NotEnoughData(f"{len(interactions)} examples before the holdout; at least {settings.min_examples} needed")
    repository = Path(settings.model_repository)
    counter: VersionCounter | None = None
    problem: str | None = None
    if dd.is_main():
        # Before the hours of training, not after: a counter this run cannot use (no token, RBAC, an API server
        # away for the whole deadline) fails it now, on every rank (the others wait on the broadcast below).
        try:
            counter = counter_from_setting(settings.model_version_counter)
            if counter is not None:
                log.info("version numbers from %s (last handed out: %d)", counter, counter.check())
        except (ValueError, VersionCounterError) as exc:
            problem = str(exc)
    champion, problem = dd.broadcast_object(
        (repo.read_champion(repository, repo.RANKER_MODEL), problem) if dd.is_main() else None
    )
    if problem is not None:
        raise VersionCounterError(problem)
    warm_start = repository / repo.RANKER_MODEL / str(champion) if champion else None
    overrides: dict[str, Any] = {"seed": settings.seed, "device": settings.train_device}
    if settings.max_epochs:
        overrides["epochs"] = overrides["tower_epochs"] = settings.max_epochs
    if settings.time_budget_s:
        overrides["time_budget_s"] = settings.time_budget_s
    if settings.checkpoint_dir:
        overrides["checkpoint_dir"] = str(settings.checkpoint_dir)
    if dd.is_main():
        log.info("training on %d examples (%s), warm start from %s", len(interactions), window, warm_start)
    config = model_config(settings.model_size, **overrides)
    trained = train_models(
        interactions, item_features, config, warm_start_dir=warm_start, progress=True, on_epoch=on_epoch
    )
    if not dd.is_main():
        outcome: TrainOutcome = dd.broadcast_object(None)
        return outcome
    try:
        outcome = _write_version(settings, trained, interactions, window, champion, repository, started, counter)
    except BaseException:
        dd.broadcast_object(None)  # release the other ranks rather than leave them waiting
        raise
    dd.broadcast_object(outcome)
    for name in ("ranker", "two-tower"):
        path = checkpoint_path(config, name)
        if path is not None:
            path.unlink(missing_ok=True)  # the version is written: the next Job starts fresh
    return outcome


def _write_version(
    settings: TrainerSettings,
    trained: Any,
    interactions: Interactions,
    window: DataWindow,
    champion: int | None,
    repository: Path,
    started: float,
    counter: VersionCounter | None = None,
) -> TrainOutcome:
    from scalerec_models.pipeline import export

    # On the repository's volume, not /tmp: a large model's export is tens of GB.
    with export_scratch(repository) as tmp:
        files = export(trained, Path(tmp))
        files["item_neighbors"] = write_item_neighbors(interactions, trained.vocab, Path(tmp) / NEIGHBORS_FILE)
        card = {
            "metrics": trained.metrics,
            "training_history": trained.history,
            "data_window": window.to_card(),
            "feature_version": FEATURE_VERSION,
            "model_size": settings.model_size,
            "warm_start_version": champion,
            "trained_at": datetime.now(UTC).isoformat(),
            "train_seconds": round(time.perf_counter() - started, 2),
            # Readers of a mirrored repository wait for every one of them (repository.version_arrived).
            repo.VERSION_MODELS_KEY: list(RUN_MODELS),
        }
        extras = {path.name: path for name, path in files.items() if name not in ("ranker", "user_tower")}
        # The candidate graphs are the ranker's (in-process scoring of its version): not copied to the tower.
        tower_extras = {name: path for name, path in extras.items() if name not in CANDIDATE_GRAPH_FILES}
        # One number for both models, taken under the repository's writer lock (a crashed earlier run's
        # half-written version is removed first, so it cannot wedge this one).
        with allocate_version(repository, counter=counter) as allocation:
            version = allocation.version
            repo.write_model_version(
                repository,
                repo.USER_TOWER_MODEL,
                files["user_tower"],
                card=card,
                extra_files=tower_extras,
                version=version,
            )
            # The ranker version is written last: its appearance is what makes the version complete.
            repo.write_model_version(
                repository, repo.RANKER_MODEL, files["ranker"], card=card, extra_files=extras, version=version
            )
            prune_versions(repository, settings.keep_versions)
    seconds = time.perf_counter() - started
    log.info("wrote model version %d in %.1fs: %s", version, seconds, trained.metrics)
    return TrainOutcome(version=version, card=card, seconds=seconds)


async def announce_candidate(producer: Producer, settings: TrainerSettings, outcome: TrainOutcome) -> None:
    """Tell the evaluator a new version is ready (``<DEPLOYMENT>.models.candidate.v1``)."""
    announcement = ModelAnnouncement(
        model=repo.RANKER_MODEL,
        version=outcome.version,
        repository=str(settings.model_repository),
        created_at=datetime.now(UTC),
        metrics={k: float(v) for k, v in outcome.card.get("metrics", {}).items()},
        data_window=outcome.card["data_window"],
        feature_version=outcome.card["feature_version"],
    )
    await producer.send(
        settings.topic(Topic.MODELS_CANDIDATE),
        announcement.model_dump_json().encode(),
        key=repo.RANKER_MODEL.encode(),
        headers=inject_headers(),
    )
