"""The serving models: load, lay out, warm up, hot swap without dropping requests, release old ones later.

The manager serves the champion (``current``) and, while an experiment runs, every variant's
version: :meth:`route` gives each user the model of the variant the experiment's salted hash
assigns them to.  A request takes its model once and keeps that reference to the end, so a
swap in the middle never mixes versions; a version no longer needed is released from the
scorer only after a grace period longer than any request.  Releasing is local: on Triton the
ranker is a follower that never unloads (the evaluator owns Triton's model control).

With the in-process scorer, a version that carries the candidate graphs (``scalerec_models.bundle``)
gets its candidates' vectors computed in its item table when it is built, and is scored on them.

The manager also owns this process's :class:`Catalogue`: catalogue changes from the
items topic go to it and to the served version's item table at once, and a version
being activated is built from a snapshot and then catches up with what changed
while it was built, before the swap — so no update falls between two tables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.store import WideColumnStore
from scalerec_events.experiments import Assignment, Experiment
from scalerec_features import context_features
from scalerec_features.serving import CANDIDATE_ENCODER, CANDIDATE_FEATURES, CANDIDATE_VECTORS, CANDIDATES
from scalerec_models import repository as repo
from scalerec_models.bundle import (
    CANDIDATE_ENCODER_FILE,
    CANDIDATE_GRAPH_FILES,
    RANKER_ON_VECTORS_FILE,
    USER_STATES_FILE,
)
from scalerec_models.integrity import verify_files
from scalerec_models.runtime import ModelVersion

from scalerec_ranker.items import Catalogue, Encoder, ItemRow
from scalerec_ranker.metrics import CHAMPION
from scalerec_ranker.serving import ServingModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routing:
    """A running experiment as served: its assignment and each variant's loaded model."""

    experiment: Experiment
    assignment: Assignment
    models: dict[str, ServingModel]


class ModelManager:
    def __init__(
        self,
        scorer: Scorer,
        repository: Path,
        unload_grace_s: float = 10.0,
        max_candidates: int = 300,
        catalogue: Catalogue | None = None,
        candidate_vectors_max_bytes: int = 256 << 20,
    ) -> None:
        self.scorer = scorer
        self.candidate_vectors_max_bytes = candidate_vectors_max_bytes
        self.repository = repository
        self.unload_grace_s = unload_grace_s
        self.max_candidates = max_candidates
        self.catalogue = catalogue or Catalogue()
        self.current: ServingModel | None = None
        self.routing: Routing | None = None
        self.loaded: dict[int, ServingModel] = {}
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._building = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def load_catalogue(self, store: WideColumnStore) -> int:
        """The catalogue as stored (once, at start); the items topic keeps it current afterwards."""
        rows: dict[str, ItemRow] = {}

        def read() -> None:
            probe = Catalogue()
            probe.load(store)
            rows.update(probe.rows)

        await asyncio.to_thread(read)
        # Rows that came over the topic meanwhile are newer than the scan: keep them.
        fresh = [row for item_id, row in rows.items() if item_id not in self.catalogue.rows]
        self.apply_items(fresh)
        return len(rows)

    def apply_items(self, rows: Iterable[ItemRow]) -> int:
        """Catalogue changes: into the catalogue and the served table (event loop only)."""
        changed = self.catalogue.apply(rows)
        if changed:
            for model in self.loaded.values():
                model.table.apply(changed)
        if not self._building:
            self.catalogue.trim_log()
        return len(changed)

    def route(self, user_id: str) -> tuple[ServingModel | None, str | None, str | None]:
        """(model, variant, experiment id) that answers ``user_id``: the champion outside experiments."""
        routing = self.routing
        if routing is None:
            return self.current, None, None
        variant = routing.assignment.variant_of(user_id)
        return routing.models[variant.name], variant.name, routing.experiment.experiment_id

    def served_versions(self) -> dict[str, int]:
        """Variant → model version in service (the champion alone outside experiments; metrics read it)."""
        routing = self.routing
        if routing is not None:
            return {name: model.version for name, model in routing.models.items()}
        return {CHAMPION: self.current.version} if self.current else {}

    async def _ensure(self, version: int) -> ServingModel:
        """The loaded, warmed-up model of ``version`` (built now when needed); the caller holds the lock."""
        if version in self.loaded:
            return self.loaded[version]
        self._building += 1
        try:
            snapshot_seq = self.catalogue.sequence
            rows = list(self.catalogue.rows.values())
            model = await asyncio.to_thread(self._build, version, rows)
            await self.scorer.load(repo.RANKER_MODEL, version)
            has_tower = (self.repository / repo.USER_TOWER_MODEL / str(version) / repo.MODEL_FILE).exists()
            if has_tower:
                await self.scorer.load(repo.USER_TOWER_MODEL, version)
            await self._warm_up(model, has_tower)
        finally:
            self._building -= 1
        # No await between catching up and registering it: from here on apply_items updates it too.
        model.table.apply(self.catalogue.changed_since(snapshot_seq))
        self.loaded[version] = model
        return model

    async def activate(self, version: int) -> bool:
        """Load ``version``, warm it up, make it the champion; False (and the old one keeps serving) on failure."""
        async with self._lock:
            if self.current and self.current.version == version:
                return True
            try:
                model = await self._ensure(version)
            except Exception as exc:
                self.last_error = f"version {version}: {type(exc).__name__}: {exc}"
                log.error(
                    "could not activate model %s; keeping %s",
                    self.last_error,
                    self.current.version if self.current else "the baseline",
                )
                return False
            old, self.current = self.current, model
            self.last_error = None
            log.info("serving model version %d (was %s)", version, old.version if old else "none")
            self._release_unused()
            return True

    async def follow_experiment(self, experiment: Experiment | None) -> bool:
        """Route by ``experiment`` (None or not running: everyone gets the champion).

        Every variant's version is loaded before routing switches; if one cannot be, no one is
        routed (the champion answers everybody, without a variant) and ``last_error`` says why.
        """
        async with self._lock:
            if experiment is None or not experiment.running:
                if self.routing is not None:
                    log.info(
                        "experiment %s ended: serving the champion to everyone", self.routing.experiment.experiment_id
                    )
                self.routing = None
                self._release_unused()
                return True
            if self.routing is not None and self.routing.experiment == experiment:
                return True
            try:
                models = {v.name: await self._ensure(v.model_version) for v in experiment.variants}
            except Exception as exc:
                self.last_error = f"experiment {experiment.experiment_id}: {type(exc).__name__}: {exc}"
                log.error("cannot serve %s; serving the champion to everyone", self.last_error)
                self.routing = None
                self._release_unused()
                return False
            self.routing = Routing(experiment, Assignment(experiment), models)
            log.info(
                "experiment %s: %s",
                experiment.experiment_id,
                ", ".join(f"{v.name}=v{v.model_version} ({v.share:.0%})" for v in experiment.variants),
            )
            self._release_unused()
            return True

    def _release_unused(self) -> None:
        needed = {m.version for m in (self.routing.models.values() if self.routing else ())}
        if self.current is not None:
            needed.add(self.current.version)
        for version in [v for v in self.loaded if v not in needed]:
            del self.loaded[version]
            task = asyncio.create_task(self._unload_later(version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _build(self, version: int, rows: list[ItemRow]) -> ServingModel:
        self._verify(version)
        model = ModelVersion.load(self.repository, version)
        return ServingModel.build(model, rows, self._candidate_encoder(version), self.candidate_vectors_max_bytes)

    def _candidate_encoder(self, version: int) -> Encoder | None:
        """The version's candidate encoder, run in process; None where requests are scored whole.

        Only the in-process scorer takes candidate vectors (Triton serves the whole graph), and only
        versions exported with the candidate graphs have them.
        """
        scorer = self.scorer
        if not isinstance(scorer, OnnxRuntimeScorer) or self.candidate_vectors_max_bytes <= 0:
            return None
        if not all(scorer.has_graph(repo.RANKER_MODEL, version, f) for f in CANDIDATE_GRAPH_FILES):
            return None
        outputs = list(CANDIDATE_ENCODER.output_names)

        def encode(indices: np.ndarray, features: np.ndarray) -> np.ndarray:
            feeds = {CANDIDATES.name: indices[None], CANDIDATE_FEATURES.name: features[None]}
            out = scorer.run(repo.RANKER_MODEL, version, feeds, outputs, graph=CANDIDATE_ENCODER_FILE)
            return np.asarray(out[CANDIDATE_VECTORS.name][0], dtype=np.float32)

        return encode

    def _verify(self, version: int) -> None:
        """Every file of the version (ranker, and user tower if any) as its card recorded it, before any is read.

        A tampered or damaged file raises IntegrityError, which ``activate`` reports in ``last_error``
        while the previous version (or the baseline) keeps serving.
        """
        for model in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
            folder = self.repository / model / str(version)
            if model == repo.USER_TOWER_MODEL and not folder.exists():
                continue
            verify_files(folder, repo.read_card(self.repository, model, version), exclude={repo.CARD_FILE})

    async def _warm_up(self, model: ServingModel, has_tower: bool) -> None:
        """One full-size request: the shape every request has, so the first real one pays nothing extra."""
        n = self.max_candidates
        # A context as a request gets one (now, a named device and locale), from the features' own function.
        context = context_features(int(time.time() * 1000), "desktop", "en-US")
        inputs = {
            "history": np.zeros((1, model.model.history_len), dtype=np.int64),
            "context": np.asarray([context], dtype=np.int64),
            "candidates": np.zeros((1, n), dtype=np.int64),
            "candidate_features": np.zeros((1, n, model.table.features.shape[1]), dtype=np.int64),
        }
        inputs["history"][0, -1] = inputs["candidates"][0, 0] = min(2, len(model.table) - 1)
        await self.scorer.infer(repo.RANKER_MODEL, model.version, inputs, ["scores"])
        vectors = model.table.vectors
        if vectors is not None and isinstance(self.scorer, OnnxRuntimeScorer):
            on_vectors: dict[str, np.ndarray] = {
                "history": inputs["history"],
                "context": inputs["context"],
                CANDIDATE_VECTORS.name: np.zeros((1, n, vectors.shape[1]), dtype=np.float32),
            }
            await self.scorer.infer(
                repo.RANKER_MODEL, model.version, on_vectors, ["scores"], graph=RANKER_ON_VECTORS_FILE
            )
            user = {"history": inputs["history"], "context": inputs["context"]}
            await self.scorer.infer(
                repo.RANKER_MODEL, model.version, user, ["user_embedding", "ranker_state"], graph=USER_STATES_FILE
            )
        if has_tower:
            user_inputs = {"history": inputs["history"], "context": inputs["context"]}
            await self.scorer.infer(repo.USER_TOWER_MODEL, model.version, user_inputs, ["user_embedding"])

    async def _unload_later(self, version: int) -> None:
        await asyncio.sleep(self.unload_grace_s)
        if version in self.loaded:
            return  # needed again meanwhile
        for name in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
            try:
                await self.scorer.unload(name, version)
            except Exception as exc:
                log.info("unload of %s/%d failed (harmless): %s", name, version, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
