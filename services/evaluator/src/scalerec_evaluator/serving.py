"""The one owner of what is served: the configs' version policy and Triton's explicit model control.

Rankers never load or unload on Triton (their Triton scorer is a follower, ``control=false``): a
replica could otherwise unload a version another replica still serves.  The evaluator decides what
must be served — the champion and every version of the running experiment — because it is the one
that changes either.  A version about to be needed is loaded *before* rankers are told about it;
a version no longer needed is unloaded only after ``unload_grace_s``, when every ranker has
followed the announcement that replaced it.

Triton may run as several replicas: ``TRITON_URL`` names them all (a headless Service's name resolves to
every pod; the chart's ``<release>-triton-pods`` lists pods that are not ready yet too), and each
replica is controlled on its own: what a ClusterIP's one connection would reach is only one of them.
The replicas are looked up again on every change and every ``TRITON_REPAIR_S`` (the evaluator runs
:meth:`ServingController.repair` in a loop): a replica restarted (explicit model control starts empty)
or added by the autoscaler gets the needed versions without waiting for the next promotion.

Without ``TRITON_URL`` (embedded deployments: rankers score in process) only the configs are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from scalerec_adapters.factory import make_scorer, triton_replica_urls
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.triton_scorer import TritonScorer
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
        self.triton_url = triton_url
        if triton_url:  # built once to check it: a bad URL or option fails at start, not at a promotion
            make_scorer(triton_url, repository=self.repository)
        self.replicas: dict[str, TritonScorer] = {}  # replica URL -> its controlling client
        self.unload_grace_s = unload_grace_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def _versions(self, model: str, versions: set[int]) -> set[int]:
        return {v for v in versions if (self.repository / model / str(v) / repo.MODEL_FILE).is_file()}

    def _per_model(self, versions: set[int]) -> dict[str, list[int]]:
        """Of ``versions``, those each model has in the repository (looked up once, for every replica)."""
        return {model: sorted(self._versions(model, versions)) for model in MODELS}

    def _write_configs(self, versions: set[int]) -> None:
        for model in MODELS:
            mine = self._versions(model, versions)
            if mine:
                repo.set_served_versions(self.repository, model, mine)

    async def _replicas(self) -> dict[str, TritonScorer]:
        """Every Triton replica there is now (looked up again each time); clients of gone ones closed."""
        if not self.triton_url:
            return {}
        try:
            urls = await asyncio.to_thread(triton_replica_urls, self.triton_url)
        except OSError as exc:  # the name does not resolve (DNS down, no pod yet): keep what we know
            log.warning("triton: cannot look up the replicas of %s: %s", self.triton_url, exc)
            return dict(self.replicas)
        for gone in set(self.replicas) - set(urls):
            log.info("triton: replica %s is gone", gone)
            await self.replicas.pop(gone).close()
        for url in urls:
            if url not in self.replicas:
                triton = make_scorer(url, repository=self.repository)
                assert isinstance(triton, TritonScorer), url
                self.replicas[url] = triton
        return dict(self.replicas)

    async def add(self, versions: set[int]) -> None:
        """Serve ``versions`` too (configs, then every Triton replica), keeping what serves now: call before
        announcing. Raises ``ScorerUnavailable`` (nothing to announce) unless at least one replica serves
        them; one that failed is logged and gets them from :meth:`repair`."""
        async with self._lock:
            served = set(repo.read_served_versions(self.repository, repo.RANKER_MODEL))
            await asyncio.to_thread(self._write_configs, served | versions)
            if not self.triton_url:
                return
            replicas = await self._replicas()
            if not replicas:
                raise ScorerUnavailable(f"triton: no replica of {self.triton_url} found to load {sorted(versions)}")

            wanted = self._per_model(versions)

            async def load_on(url: str, triton: TritonScorer) -> str | None:
                try:
                    for model, model_versions in wanted.items():
                        for v in model_versions:
                            await triton.load(model, v)
                except ScorerUnavailable as exc:
                    return f"{url}: {exc}"
                return None

            # Side by side: one replica that is slow or unreachable delays the promotion by its own time only.
            outcomes = await asyncio.gather(*(load_on(url, triton) for url, triton in replicas.items()))
            failures = [failure for failure in outcomes if failure is not None]
            if len(failures) == len(replicas):
                raise ScorerUnavailable("; ".join(failures))
            for failure in failures:
                log.warning("triton: replica not serving the new versions yet (repair retries it): %s", failure)

    def settle(self) -> None:
        """After the grace period, serve exactly what is needed then (call after announcing a change)."""
        task = asyncio.create_task(self._settle_later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_later(self) -> None:
        await asyncio.sleep(self.unload_grace_s)
        await self.reconcile()

    async def reconcile(self) -> None:
        """Serve exactly what is needed now: configs, then on every replica load it and unload the rest."""
        async with self._lock:
            keep = await asyncio.to_thread(self.needed)
            if not keep:
                return
            served = set(repo.read_served_versions(self.repository, repo.RANKER_MODEL))
            await asyncio.to_thread(self._write_configs, keep)

            wanted = self._per_model(keep)

            async def settle_on(url: str, triton: TritonScorer) -> None:
                for model, model_versions in wanted.items():
                    for v in model_versions:
                        try:
                            await triton.load(model, v)  # after a Triton restart (explicit mode starts empty)
                        except ScorerUnavailable as exc:
                            log.warning("triton %s: %s", url, exc)
                    for v in sorted(served - keep):
                        try:
                            await triton.unload(model, v)
                        except ScorerUnavailable as exc:
                            log.info("triton %s: %s", url, exc)

            await asyncio.gather(*(settle_on(url, triton) for url, triton in (await self._replicas()).items()))
            log.info("serving versions %s (was %s)", sorted(keep), sorted(served))

    async def repair(self) -> None:
        """Load what is needed on every replica that lacks it (restarted, or new); unload nothing.

        Unloading stays with :meth:`reconcile` after a change's grace period: between ``add`` and the
        champion being recorded, a version is served but not yet "needed".
        """
        async with self._lock:
            keep = await asyncio.to_thread(self.needed)
            if not keep or not self.triton_url:
                return

            wanted = self._per_model(keep)

            async def repair_on(url: str, triton: TritonScorer) -> None:
                for model, model_versions in wanted.items():
                    try:
                        missing = set(model_versions) - await triton.loaded_versions(model)
                        for v in sorted(missing):
                            log.info("triton %s: %s version %d is needed and not loaded: loading it", url, model, v)
                            await triton.load(model, v)
                    except Exception as exc:  # unreachable, restarting: the next round tries again
                        log.warning("triton %s: %s", url, exc)

            await asyncio.gather(*(repair_on(url, triton) for url, triton in (await self._replicas()).items()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for triton in self.replicas.values():
            await triton.close()
        self.replicas.clear()
