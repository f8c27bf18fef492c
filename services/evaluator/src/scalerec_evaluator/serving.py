"""The one owner of what is served: the configs' version policy and Triton's explicit model control.

Rankers never load or unload on Triton (their Triton scorer is a follower, ``control=false``): a
replica could otherwise unload a version another replica still serves.  The evaluator decides what
must be served — the champion and every version of the running experiment — because it is the one
that changes either.  A version about to be needed is loaded *before* rankers are told about it;
a version no longer needed is unloaded only after ``unload_grace_s``, when every ranker has
followed the announcement that replaced it.

Without ``TRITON_URL`` (embedded deployments: rankers score in process) only the configs are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from scalerec_adapters.factory import make_scorer
from scalerec_adapters.scoring import Scorer, ScorerUnavailable
from scalerec_models import repository as repo

log = logging.getLogger(__name__)

MODELS = (repo.RANKER_MODEL, repo.USER_TOWER_MODEL)


class ServingController:
    def __init__(
        self,
        repository: Path,
        needed: Callable[[], set[int]],
        *,
        triton_url: str = "",
        unload_grace_s: float = 30.0,
    ) -> None:
        self.repository = Path(repository)
        self.needed = needed  # the champion and the running experiment's versions, as stored now
        self.triton: Scorer | None = make_scorer(triton_url, repository=self.repository) if triton_url else None
        self.unload_grace_s = unload_grace_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def _versions(self, model: str, versions: set[int]) -> set[int]:
        return {v for v in versions if (self.repository / model / str(v) / repo.MODEL_FILE).is_file()}

    def _write_configs(self, versions: set[int]) -> None:
        for model in MODELS:
            mine = self._versions(model, versions)
            if mine:
                repo.set_served_versions(self.repository, model, mine)

    async def add(self, versions: set[int]) -> None:
        """Serve ``versions`` too (configs, then Triton), keeping what serves now: call before announcing."""
        async with self._lock:
            served = set(repo.read_served_versions(self.repository, repo.RANKER_MODEL))
            await asyncio.to_thread(self._write_configs, served | versions)
            if self.triton is not None:
                for model in MODELS:
                    for v in sorted(self._versions(model, versions)):
                        await self.triton.load(model, v)  # raises ScorerUnavailable: nothing announced then

    def settle(self) -> None:
        """After the grace period, serve exactly what is needed then (call after announcing a change)."""
        task = asyncio.create_task(self._settle_later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_later(self) -> None:
        await asyncio.sleep(self.unload_grace_s)
        await self.reconcile()

    async def reconcile(self) -> None:
        async with self._lock:
            keep = await asyncio.to_thread(self.needed)
            if not keep:
                return
            served = set(repo.read_served_versions(self.repository, repo.RANKER_MODEL))
            await asyncio.to_thread(self._write_configs, keep)
            if self.triton is None:
                return
            for model in MODELS:
                for v in sorted(self._versions(model, keep)):
                    try:
                        await self.triton.load(model, v)  # after a Triton restart (explicit mode starts empty)
                    except ScorerUnavailable as exc:
                        log.warning("triton: %s", exc)
                for v in sorted(served - keep):
                    try:
                        await self.triton.unload(model, v)
                    except ScorerUnavailable as exc:
                        log.info("triton: %s", exc)
            log.info("serving versions %s (was %s)", sorted(keep), sorted(served))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.triton is not None:
            await self.triton.close()
