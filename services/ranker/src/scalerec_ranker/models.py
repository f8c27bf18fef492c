"""The serving model: load, lay out, warm up, hot swap without dropping requests, unload the old one later.

A request takes ``manager.current`` once and keeps that reference to the end, so a
swap in the middle never mixes versions; the old version is unloaded from the
scorer only after a grace period longer than any request.

The manager also owns this process's :class:`Catalogue`: catalogue changes from the
items topic go to it and to the served version's item table at once, and a version
being activated is built from a snapshot and then catches up with what changed
while it was built, before the swap — so no update falls between two tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.store import WideColumnStore
from scalerec_models import repository as repo
from scalerec_models.integrity import verify_files
from scalerec_models.runtime import ModelVersion

from scalerec_ranker.items import Catalogue, ItemRow
from scalerec_ranker.serving import ServingModel

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(
        self,
        scorer: Scorer,
        repository: Path,
        unload_grace_s: float = 10.0,
        max_candidates: int = 300,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.scorer = scorer
        self.repository = repository
        self.unload_grace_s = unload_grace_s
        self.max_candidates = max_candidates
        self.catalogue = catalogue or Catalogue()
        self.current: ServingModel | None = None
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
        if changed and self.current is not None:
            self.current.table.apply(changed)
        if not self._building:
            self.catalogue.trim_log()
        return len(changed)

    async def activate(self, version: int) -> bool:
        """Load ``version``, warm it up, switch to it; False (and the old one keeps serving) on failure."""
        async with self._lock:
            if self.current and self.current.version == version:
                return True
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
            except Exception as exc:
                self.last_error = f"version {version}: {type(exc).__name__}: {exc}"
                log.error(
                    "could not activate model %s; keeping %s",
                    self.last_error,
                    self.current.version if self.current else "the baseline",
                )
                return False
            finally:
                self._building -= 1
            # No await between catching up and the swap: no catalogue update can slip in between.
            model.table.apply(self.catalogue.changed_since(snapshot_seq))
            old, self.current = self.current, model
            self.last_error = None
            log.info("serving model version %d (was %s)", version, old.version if old else "none")
            if old is not None:
                task = asyncio.create_task(self._unload_later(old.version))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return True

    def _build(self, version: int, rows: list[ItemRow]) -> ServingModel:
        self._verify(version)
        return ServingModel.build(ModelVersion.load(self.repository, version), rows)

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
        inputs = {
            "history": np.zeros((1, model.model.history_len), dtype=np.int64),
            "context": np.asarray([[12, 2, 1, 0]], dtype=np.int64),
            "candidates": np.zeros((1, n), dtype=np.int64),
            "candidate_features": np.zeros((1, n, model.table.features.shape[1]), dtype=np.int64),
        }
        inputs["history"][0, -1] = inputs["candidates"][0, 0] = min(2, len(model.table) - 1)
        await self.scorer.infer(repo.RANKER_MODEL, model.version, inputs, ["scores"])
        if has_tower:
            user_inputs = {"history": inputs["history"], "context": inputs["context"]}
            await self.scorer.infer(repo.USER_TOWER_MODEL, model.version, user_inputs, ["user_embedding"])

    async def _unload_later(self, version: int) -> None:
        await asyncio.sleep(self.unload_grace_s)
        for name in (repo.RANKER_MODEL, repo.USER_TOWER_MODEL):
            try:
                await self.scorer.unload(name, version)
            except Exception as exc:
                log.info("unload of %s/%d failed (harmless): %s", name, version, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
