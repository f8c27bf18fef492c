"""The serving model: load, warm up, hot swap without dropping requests, unload the old one later.

A request takes ``manager.current`` once and keeps that reference to the end, so a
swap in the middle never mixes versions; the old version is unloaded from the
scorer only after a grace period longer than any request.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from scalerec_adapters.scoring import Scorer
from scalerec_features import HISTORY_LEN, ITEM_FEATURE_LEN
from scalerec_models import repository as repo
from scalerec_models.runtime import ModelVersion

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, scorer: Scorer, repository: Path, unload_grace_s: float = 10.0) -> None:
        self.scorer = scorer
        self.repository = repository
        self.unload_grace_s = unload_grace_s
        self.current: ModelVersion | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def activate(self, version: int) -> bool:
        """Load ``version``, warm it up, switch to it; False (and the old one keeps serving) on failure."""
        async with self._lock:
            if self.current and self.current.version == version:
                return True
            try:
                model = await asyncio.to_thread(ModelVersion.load, self.repository, version)
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
            old, self.current = self.current, model
            self.last_error = None
            log.info("serving model version %d (was %s)", version, old.version if old else "none")
            if old is not None:
                task = asyncio.create_task(self._unload_later(old.version))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return True

    async def _warm_up(self, model: ModelVersion, has_tower: bool) -> None:
        item = model.bundle.vocab.item_id(2) or "warmup"
        inputs = model.encode([[item] * min(3, HISTORY_LEN)], [[12, 2, 1, 0]], [[item]], [[[0] * ITEM_FEATURE_LEN]])
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
