"""candidates → features → score → re-rank → explain.

Every step degrades instead of failing: no history or no model → trending
(flagged); the store down → history from the cache, else trending (flagged); the
scorer down → the candidates in baseline order (flagged).

Slow backends are bounded, not only dead ones.  Each request has a time budget
(``REQUEST_BUDGET_MS``, an ``asyncio.timeout_at`` on the loop: no task or thread of its
own): the history read, retrieval and scoring stop at it and the answer is flagged.
Cache and store reads run on a fixed pool of ``BACKEND_THREADS`` threads with at most
``BACKEND_QUEUE`` reads waiting (a queued read is dropped when its request's budget
ends); a request that finds the queue full skips the read instead of piling up behind
a stuck backend, so threads and queued work stay bounded.  A read slower than ``BACKEND_SLOW_MS`` (or
failing) counts against that backend's circuit breaker; an open breaker skips the
backend (cache open → read the store; store open → serve without history) until a
probe after ``BREAKER_RESET_S`` finds it well again.

The request path reads arrays: the user's state in one cache round trip (the store
only on a miss), candidates as position arrays from the served version's
precomputed tables (:mod:`scalerec_ranker.serving`), one ONNX call padded to
``MAX_CANDIDATES`` so that requests of one shape batch together, re-ranking and
explanations with numpy.  Python loops run only over the ``k`` items answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydantic_core import to_json
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.resilience import BreakerState, CircuitBreaker
from scalerec_adapters.scoring import Scorer, ScorerUnavailable
from scalerec_adapters.store import WideColumnStore
from scalerec_events.models import EventType
from scalerec_features import HISTORY_LEN, context_features
from scalerec_models import candidates
from scalerec_models import repository as repo
from scalerec_models.bundle import RANKER_ON_VECTORS_FILE, USER_STATES_FILE, scores_on_vectors
from scalerec_models.data import FIRST_ITEM
from scalerec_storage import records as r

from scalerec_ranker.baselines import Baselines
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.impressions import ImpressionPublisher
from scalerec_ranker.items import ItemRow
from scalerec_ranker.metrics import CHAMPION, Fallback, ServingMetrics
from scalerec_ranker.models import ModelManager
from scalerec_ranker.serving import FRESH, ITEM_CF, RETRIEVAL, SOURCES, TRENDING, Candidates, ServingModel

log = logging.getLogger(__name__)

# A refilled cache entry is read again in the background once a hit finds it this far into its TTL.
_REFRESH_AT = 0.75
_REFILLS_REMEMBERED = 200_000  # users whose refill time this process keeps (~100 bytes each)
_IMPRESSION = EventType.IMPRESSION.value
_PURCHASE = EventType.PURCHASE.value
# Request ids: a random prefix per process and a counter (unique across replicas; no syscall per request).
_ID_PREFIX = os.urandom(11).hex()
_request_numbers = itertools.count()


# (recent history oldest first, every item ever bought, where it came from, why it is missing)
State = tuple[list[r.HistoryEntry], set[str], str, str | None]


@dataclass
class Recommended:
    item_id: str
    score: float
    source: str
    reason: str
    because: list[str] = field(default_factory=list)
    title: str = ""
    category: str = ""


@dataclass
class Recommendation:
    request_id: str
    user_id: str
    items: list[Recommended]
    model_version: int | None
    fallback: bool
    fallback_reason: str | None
    scorer: str
    history_source: str
    took_ms: float = 0.0
    candidates_scored: int = 0
    # The experiment's variant this user is assigned to (also on a fallback answer), None outside experiments.
    variant: str | None = None
    experiment_id: str | None = None


class Recommender:
    def __init__(
        self,
        settings: RankerSettings,
        store: WideColumnStore,
        cache: Cache,
        scorer: Scorer,
        models: ModelManager,
        baselines: Baselines,
        impressions: ImpressionPublisher | None = None,
    ) -> None:
        self.settings = settings
        # Every answer's exposure goes to the bus through it (batched off the request path); None: not logged.
        self.impressions = impressions
        self.store = store
        self.cache = cache
        self.keys = CacheKeys(settings.deployment)
        self.scorer = scorer
        # Takes candidate vectors (a version's candidate graphs) when scoring runs in this process.
        self._local = scorer if isinstance(scorer, OnnxRuntimeScorer) else None
        self.models = models
        self.baselines = baselines
        self._primary = scorer.name.split(">")[0]
        self.metrics = ServingMetrics(self.models.served_versions)
        self._budget_s = settings.request_budget_ms / 1000
        self._slow_s = settings.backend_slow_ms / 1000
        self.cache_breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_timeout=settings.breaker_reset_s
        )
        self.store_breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_timeout=settings.breaker_reset_s
        )
        self._threads = settings.backend_threads
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="ranker-backend")
        # A slot per thread and per queued read: what waits for a slow backend is bounded too.
        self._queue = self._threads + settings.backend_queue
        self._slots = threading.BoundedSemaphore(self._queue)
        # Refresh-ahead of the cache entries this process refilled from the store (they live
        # USER_STATE_TTL_SECONDS): a hit on one older than _REFRESH_AT of that is answered at once and
        # read again off the request path, so an active user's entry is renewed before it expires
        # instead of one of their requests waiting for the store every TTL.
        self._refresh_after_s = settings.user_state_ttl_seconds * _REFRESH_AT
        self._refilled: OrderedDict[str, float] = OrderedDict()  # user -> monotonic time of the refill
        self._refreshing: set[str] = set()
        self._refill_lock = threading.Lock()
        self.refreshes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ data access (cache ▸ store)

    def _outcome(self, breaker: CircuitBreaker, name: str, elapsed_s: float, error: str | None = None) -> None:
        if error is None and elapsed_s <= self._slow_s:
            breaker.record_success()
            return
        was_closed = breaker.state is BreakerState.CLOSED
        breaker.record_failure()
        if was_closed and breaker.state is not BreakerState.CLOSED:
            why = error or f"{elapsed_s * 1000:.0f} ms, over BACKEND_SLOW_MS={self._slow_s * 1000:.0f}"
            log.warning("%s breaker open (%s): skipped for %.0f s", name, why, breaker.reset_timeout)

    def _read_state(self, user_id: str, answer: Future[State]) -> None:
        """The user's state into ``answer`` as soon as it is known; then the cache refill, on this thread
        but no longer on the request's time."""
        if not answer.set_running_or_notify_cancel():
            return  # the request's budget ended while this read was queued: nobody waits for it
        try:
            state, refill = self._state(user_id)
        except BaseException as exc:  # pragma: no cover - _state catches what the backends raise
            answer.set_exception(exc)
            raise
        answer.set_result(state)
        if refill:
            self._write_back(user_id, refill)

    def _write_back(self, user_id: str, refill: dict[str, bytes]) -> None:
        """Store reads into the cache for USER_STATE_TTL_SECONDS, remembered for refresh-ahead."""
        if not self.cache_breaker.allow():
            return
        t = time.perf_counter()  # timed against the cache, not the store
        try:
            self.cache.set_many(refill, self.settings.user_state_ttl_seconds)
        except Exception as exc:
            self._outcome(self.cache_breaker, "cache", time.perf_counter() - t, f"{type(exc).__name__}: {exc}")
            return
        self._outcome(self.cache_breaker, "cache", time.perf_counter() - t)
        if len(refill) == 2:  # both entries renewed: the whole state is as fresh as this read
            with self._refill_lock:
                self._refilled[user_id] = time.monotonic()
                self._refilled.move_to_end(user_id)
                while len(self._refilled) > _REFILLS_REMEMBERED:
                    self._refilled.popitem(last=False)

    def _refresh_if_due(self, user_id: str) -> None:
        """After a cache hit: re-read the state in the background if this process refilled it long ago."""
        refilled = self._refilled.get(user_id)
        if refilled is None or time.monotonic() - refilled < self._refresh_after_s:
            return
        with self._refill_lock:
            if user_id in self._refreshing:
                return
            self._refreshing.add(user_id)
        # Only with a free backend slot: a request's read always comes before a refresh.
        if not self._slots.acquire(blocking=False):
            self._refreshing.discard(user_id)
            return
        try:
            job = self._pool.submit(self._refresh, user_id)
        except RuntimeError:  # the pool is shut down: the ranker is stopping
            self._slots.release()
            self._refreshing.discard(user_id)
            return
        job.add_done_callback(self._release_slot)

    def _refresh(self, user_id: str) -> None:
        try:
            if not self.store_breaker.allow():
                return
            read = self._read_store(user_id, None, None)
            if isinstance(read, str):
                return
            self._write_back(user_id, read[3])
            self.refreshes += 1
        finally:
            with self._refill_lock:
                self._refreshing.discard(user_id)

    def _state(self, user_id: str) -> tuple[State, dict[str, bytes]]:
        """The user's state, cache first; each backend's outcome goes to its breaker."""
        history: list[r.HistoryEntry] | None = None
        bought: set[str] | None = None
        if self.cache_breaker.allow():
            t = time.perf_counter()
            # A dead or black-holed Memcached node answers as a miss after its socket timeout
            # (pymemcache's ignore_exc), so time is the cache's failure signal.
            history, bought = r.read_cached_user_state(self.cache, self.keys, user_id, HISTORY_LEN)
            self._outcome(self.cache_breaker, "cache", time.perf_counter() - t)
            if history is not None and bought is not None:
                self._refresh_if_due(user_id)
                return (history, bought, "cache", None), {}
        if not self.store_breaker.allow():
            if history is not None:
                return (history, bought or set(), "cache", None), {}
            return ([], set(), "unavailable", "store circuit open"), {}
        read = self._read_store(user_id, history, bought)
        if isinstance(read, str):
            return ([], set(), "unavailable", f"store failed: {read}"), {}
        history, bought, source, refill = read
        return (history, bought, source, None), refill

    def _read_store(
        self, user_id: str, history: list[r.HistoryEntry] | None, bought: set[str] | None
    ) -> tuple[list[r.HistoryEntry], set[str], str, dict[str, bytes]] | str:
        """What the cache lacked, from the store, timed into the store's breaker; the error's type on failure."""
        t = time.perf_counter()
        try:
            read = r.fill_user_state(self.store, self.keys, user_id, HISTORY_LEN, history, bought)
        except Exception as exc:
            self._outcome(self.store_breaker, "store", time.perf_counter() - t, f"{type(exc).__name__}: {exc}")
            return type(exc).__name__
        self._outcome(self.store_breaker, "store", time.perf_counter() - t)
        return read

    async def user_state(self, user_id: str, deadline: float) -> State:
        """(recent history oldest first, every item ever bought, where the history came from, why it
        is missing), read by ``deadline`` (loop time) or not at all."""
        if self.cache.in_process:  # no I/O on a hit: no thread hop
            history, bought = r.read_cached_user_state(self.cache, self.keys, user_id, HISTORY_LEN)
            if history is not None and bought is not None:
                self._refresh_if_due(user_id)
                return history, bought, "cache", None
        if not self._slots.acquire(blocking=False):
            return (
                [],
                set(),
                "unavailable",
                f"all {self._threads} backend threads busy and {self._queue - self._threads} reads queued",
            )
        answer: Future[State] = Future()
        try:
            job = self._pool.submit(self._read_state, user_id, answer)
        except RuntimeError:  # the pool is shut down: the ranker is stopping
            self._slots.release()
            return [], set(), "unavailable", "ranker stopping"
        # Released when the job ends (or is cancelled before it starts), not when the request gives up.
        job.add_done_callback(self._release_slot)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.wrap_future(answer)
        except TimeoutError:
            return [], set(), "unavailable", f"not read within REQUEST_BUDGET_MS={self._budget_s * 1000:.0f}"

    def _release_slot(self, _: Future[None]) -> None:
        self._slots.release()

    async def lookup(self, item_ids: Sequence[str]) -> dict[str, ItemRow]:
        """Catalogue rows: this process's copy, the store for ids it has not seen yet."""
        rows = self.models.catalogue.rows
        found = {i: rows[i] for i in item_ids if i in rows}
        missing = [i for i in item_ids if i not in found]
        if missing:
            try:
                fetched = await asyncio.to_thread(r.get_items, self.store, missing)
            except Exception as exc:
                log.warning("catalogue unavailable (%s)", exc)
                fetched = {}
            found.update({i: ItemRow.of(item) for i, item in fetched.items()})
        return found

    # ------------------------------------------------------------ the request

    async def recommend(
        self, user_id: str, k: int, device: str | None, locale: str | None, exclude: Sequence[str] = ()
    ) -> Recommendation:
        """The answer for ``user_id``; its impression (what was shown, by which variant) goes to the bus."""
        rec = await self._answer(user_id, k, device, locale, exclude)
        if self.impressions is not None:
            self.impressions.publish(impression_payload(rec, device, locale), rec.user_id.encode())
        return rec

    async def _answer(
        self, user_id: str, k: int, device: str | None, locale: str | None, exclude: Sequence[str]
    ) -> Recommendation:
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._budget_s
        request_id = f"{_ID_PREFIX}{next(_request_numbers):010x}"
        history, bought, history_source, missing = await self.user_state(user_id, deadline)
        # One reference for the rest of the request (hot swap safe): the champion, or the user's variant.
        model, variant, experiment_id = self.models.route(user_id)
        context = context_features(int(time.time() * 1000), device, locale)
        seen = [h.item_id for h in history if h.type != _IMPRESSION]
        excluded = bought | set(exclude) | {h.item_id for h in history if h.type == _PURCHASE}

        fallback_reason = None
        code = Fallback.NONE
        if not seen:
            unavailable = history_source == "unavailable"
            code = Fallback.HISTORY_UNAVAILABLE if unavailable else Fallback.UNKNOWN_USER
            fallback_reason = f"history unavailable: {missing}" if unavailable else "unknown user: no history yet"
        elif model is None:
            code = Fallback.NO_MODEL
            fallback_reason = "no model promoted yet" + (
                f" ({self.models.last_error})" if self.models.last_error else ""
            )
        if fallback_reason or model is None:
            items = await self._popular(k, excluded, deadline)
            self.metrics.served(None, code, variant or CHAMPION)
            return Recommendation(
                request_id,
                user_id,
                items,
                None,
                True,
                fallback_reason,
                "baseline",
                history_source,
                _ms(started),
                0,
                variant,
                experiment_id,
            )

        table = model.table
        hist_pos = table.positions_or_unknown(seen)
        history_input = np.zeros((1, model.model.history_len), dtype=np.int64)
        recent = hist_pos[-model.model.history_len :]
        if len(recent):
            history_input[0, -len(recent) :] = table.model_index[recent]
        context_input = np.asarray([context], dtype=np.int64)

        cands, state = await self._candidates(model, hist_pos, history_input, context_input, excluded, deadline)
        fallback = False
        try:
            scores, scorer_name = await self._score(model, cands, history_input, context_input, deadline, state)
        except ScorerUnavailable as exc:
            log.warning("scoring failed, using baseline order: %s", exc)
            scores = cands.prior
            scorer_name, fallback, fallback_reason = "baseline", True, f"scorer unavailable: {exc}"
            code = Fallback.SCORER_UNAVAILABLE
        if not fallback and scorer_name != self._primary:
            fallback, fallback_reason = True, f"{self._primary} unavailable; scored by {scorer_name}"
            code = Fallback.SCORER_DEGRADED
        self.metrics.served(model.version, code, variant or CHAMPION)

        picked = model.rerank(
            cands,
            scores,
            k,
            per_category=candidates.per_category(k, self.settings.category_cap),
            explore=round(k * self.settings.fresh_item_slots),
        )
        positions = cands.positions[picked]
        known_hist = np.unique(hist_pos[hist_pos >= FIRST_ITEM])
        because = model.explain(positions, known_hist, self.settings.explain_min_similarity, cands.because[picked])
        items = [
            self._explain(
                table.ids, table.titles, table.categories, int(p), float(scores[i]), int(cands.source[i]), int(b)
            )
            for p, i, b in zip(positions, picked, because, strict=True)
        ]
        return Recommendation(
            request_id,
            user_id,
            items,
            model.version,
            fallback,
            fallback_reason,
            scorer_name,
            history_source,
            _ms(started),
            0 if scorer_name == "baseline" else len(cands),
            variant,
            experiment_id,
        )

    # ------------------------------------------------------------ steps

    async def _popular(self, k: int, excluded: set[str], deadline: float) -> list[Recommended]:
        if not self.baselines.trending:
            await self.baselines.ensure_trending(wait_s=max(0.0, deadline - asyncio.get_running_loop().time()))
        rows = self.models.catalogue.rows
        out = []
        for item_id, score in self.baselines.trending:
            if item_id in excluded:
                continue
            row = rows.get(item_id)
            if row is not None and not row.available:
                continue
            title, category = (row.title, row.category) if row else ("", "")
            out.append(Recommended(item_id, float(score), "trending", "Popular right now", [], title, category))
            if len(out) == k:
                break
        return out

    async def _candidates(
        self,
        model: ServingModel,
        hist_pos: np.ndarray,
        history_input: np.ndarray,
        context_input: np.ndarray,
        excluded: set[str],
        deadline: float,
    ) -> tuple[Candidates, np.ndarray | None]:
        """The merged candidates, and the ranker's user state when retrieval computed it (one run, see _score)."""
        per = self.settings.candidates_per_source
        parts: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        # Retrieval: the user tower's embedding against the item vectors (ANN).
        ann = model.model.ann
        state: np.ndarray | None = None
        # Scoring on candidate vectors (in process): the user tower and the ranker's user side are one graph.
        local = self._local if model.table.vectors is not None else None
        if ann is not None:
            try:
                # Retrieval may use at most half of what is left: scoring must still fit.
                loop_now = asyncio.get_running_loop().time()
                user = {"history": history_input, "context": context_input}
                async with asyncio.timeout_at(loop_now + (deadline - loop_now) / 2):
                    if local is not None:
                        res = await local.infer(
                            repo.RANKER_MODEL,
                            model.version,
                            user,
                            ["user_embedding", "ranker_state"],
                            graph=USER_STATES_FILE,
                        )
                        state = res["ranker_state"][0]
                    else:
                        res = await self.scorer.infer(repo.USER_TOWER_MODEL, model.version, user, ["user_embedding"])
                scores, idx = ann.search(np.asarray(res["user_embedding"][:1], dtype=np.float32), per)
                pos = model.retrieval_positions(idx[0])
                parts.append((RETRIEVAL, pos, scores[0], None))
            except (ScorerUnavailable, TimeoutError) as exc:
                log.info("retrieval skipped: %s", exc or "over half the remaining request budget")
        # Item-item CF: neighbours of the most recent distinct items, the most recent first.
        recent = candidates.recent_seeds(hist_pos, model.first_occurrences, FIRST_ITEM)
        cf_pos, cf_score, cf_seed = model.item_cf(recent, per)
        parts.append((ITEM_CF, cf_pos, cf_score, cf_seed))
        lists = model.baseline_positions(self.baselines.generation, self.baselines.trending, self.baselines.fresh)
        parts.append((TRENDING, lists.trending[:per], lists.trending_prior[:per], None))
        parts.append((FRESH, lists.fresh[: max(10, per // 5)], None, None))
        blocked = np.concatenate([model.table.positions(excluded), hist_pos[-candidates.JUST_SEEN :]])
        return model.merge(parts, blocked, self.settings.max_candidates), state

    async def _score(
        self,
        model: ServingModel,
        cands: Candidates,
        history_input: np.ndarray,
        context_input: np.ndarray,
        deadline: float,
        state: np.ndarray | None = None,
    ) -> tuple[np.ndarray, str]:
        """Scores of the candidates, and the name of the backend that computed them.

        Candidates are padded to ``MAX_CANDIDATES``: every request has the same shape, so
        Triton's dynamic batcher and the in-process micro-batcher can run many in one go.  With the
        items' candidate vectors in the table (in-process scoring), the scores are the ranker's
        ``state`` (from retrieval's run) against those vectors, or without a state the ranker on
        vectors is run; otherwise ids and content go to the whole ranker.
        """
        n = len(cands)
        if n == 0:
            return np.zeros(0, dtype=np.float32), self.scorer.name
        width = max(self.settings.max_candidates, n)
        table = model.table
        vectors = table.vectors
        local = self._local if vectors is not None else None  # scored on vectors: see ItemTable.attach_encoder
        if vectors is not None and local is not None and state is not None:
            return scores_on_vectors(state, vectors[cands.positions]).astype(np.float32, copy=False), local.name
        inputs: dict[str, np.ndarray] = {"history": history_input, "context": context_input}
        if vectors is not None and local is not None:
            on_vectors = np.zeros((1, width, vectors.shape[1]), dtype=np.float32)
            on_vectors[0, :n] = vectors[cands.positions]
            inputs["candidate_vectors"] = on_vectors
        else:
            candidates = np.zeros((1, width), dtype=np.int64)
            candidates[0, :n] = table.model_index[cands.positions]
            features = np.zeros((1, width, table.features.shape[1]), dtype=np.int64)
            features[0, :n] = table.features[cands.positions]
            inputs["candidates"], inputs["candidate_features"] = candidates, features
        now = asyncio.get_running_loop().time()
        if now >= deadline:
            raise ScorerUnavailable(f"REQUEST_BUDGET_MS={self._budget_s * 1000:.0f} spent before scoring")
        try:
            # A timeout context on this task, not wait_for's task per call.
            async with asyncio.timeout_at(min(deadline, now + self.settings.scoring_timeout_ms / 1000)):
                if local is not None:
                    out = await local.infer(
                        repo.RANKER_MODEL, model.version, inputs, ["scores"], graph=RANKER_ON_VECTORS_FILE
                    )
                    backend = local.name
                else:
                    out, backend = await self.scorer.infer_with_backend(
                        repo.RANKER_MODEL, model.version, inputs, ["scores"]
                    )
        except TimeoutError as exc:
            raise ScorerUnavailable(
                "scoring did not finish within its time (SCORING_TIMEOUT_MS / request budget)"
            ) from exc
        return np.asarray(out["scores"][0][:n], dtype=np.float32), backend

    @staticmethod
    def _explain(
        ids: list[str], titles: list[str], categories: list[str], pos: int, score: float, source: int, because: int
    ) -> Recommended:
        because_id = ids[because] if because >= 0 else None
        because_title = (titles[because] or because_id) if because_id else None
        name = SOURCES[source]
        if source == FRESH:
            reason = f"New in {categories[pos]}" + (f", like {because_title}" if because_title else "")
        elif because_title:
            reason = f"Because you viewed {because_title}"
        elif source == TRENDING:
            reason = "Popular right now"
        else:
            reason = "Matches your recent activity"
        return Recommended(
            ids[pos], score, name, reason, [because_id] if because_id else [], titles[pos], categories[pos]
        )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def impression_payload(rec: Recommendation, device: str | None, locale: str | None = None) -> bytes:
    """The answer as an :class:`Impression`'s JSON, for the bus.

    Built as plain values and serialised in one pydantic-core call: one per request, so building the
    model first (a dozen ``model_construct`` calls and a model dump) cost the request path more than
    re-ranking did.  The field names and what is left out (``None``, as ``exclude_none``) are the
    model's, and a NaN score becomes null as the model writes it: ``tests/unit/services/
    test_impressions.py`` holds this to ``Impression`` for every kind of answer, and the evaluator
    validates what it reads.
    """
    impression: dict[str, object] = {
        "schema_version": 1,
        "request_id": rec.request_id,
        "user_id": rec.user_id,
        "fallback": rec.fallback,
        "scorer": rec.scorer,
        "items": [
            {"item_id": i.item_id, "position": n, "source": i.source, "score": i.score} for n, i in enumerate(rec.items)
        ],
        "context": {k: v for k, v in (("device", device), ("locale", locale)) if v is not None},
        "ts_ms": int(time.time() * 1000),
    }
    for name in ("model_version", "experiment_id", "variant", "fallback_reason"):
        value = getattr(rec, name)
        if value is not None:
            impression[name] = value
    return to_json(impression, inf_nan_mode="null")
