"""candidates → features → score → re-rank → explain.

Every step degrades instead of failing: no history or no model → trending
(flagged); the store down → history from the cache, else trending (flagged); the
scorer down → the candidates in baseline order (flagged).

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
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.scoring import Scorer, ScorerUnavailable
from scalerec_adapters.store import WideColumnStore
from scalerec_events.models import Context, EventType, ImpressedItem, Impression
from scalerec_features import HISTORY_LEN, context_features
from scalerec_models import repository as repo
from scalerec_models.data import FIRST_ITEM
from scalerec_storage import records as r

from scalerec_ranker.baselines import Baselines
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.items import ItemRow
from scalerec_ranker.metrics import CHAMPION, Fallback, ServingMetrics
from scalerec_ranker.models import ModelManager
from scalerec_ranker.serving import FRESH, ITEM_CF, RETRIEVAL, SOURCES, TRENDING, Candidates, ServingModel

log = logging.getLogger(__name__)

RECENT_FOR_CF = 10
JUST_SEEN = 5  # the last few items seen are not news
_IMPRESSION = EventType.IMPRESSION.value
_PURCHASE = EventType.PURCHASE.value
# Request ids: a random prefix per process and a counter (unique across replicas; no syscall per request).
_ID_PREFIX = os.urandom(11).hex()
_request_numbers = itertools.count()


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.keys = CacheKeys(settings.deployment)
        self.scorer = scorer
        self.models = models
        self.baselines = baselines
        self._primary = scorer.name.split(">")[0]
        self.metrics = ServingMetrics(self.models.served_versions)

    # ------------------------------------------------------------ data access (cache ▸ store)

    def _state_from_store(self, user_id: str) -> tuple[list[r.HistoryEntry], set[str], str]:
        try:
            history, bought, source = r.cached_user_state(
                self.store, self.cache, self.keys, user_id, HISTORY_LEN, self.settings.user_state_ttl_seconds
            )
        except Exception as exc:
            log.warning("history of a user unavailable (%s); serving without it", exc)
            return [], set(), "unavailable"
        return history, bought, source

    async def user_state(self, user_id: str) -> tuple[list[r.HistoryEntry], set[str], str]:
        """(recent history oldest first, every item ever bought, where the history came from)."""
        if self.cache.in_process:  # no I/O on a hit: no thread hop
            history, bought = r.read_cached_user_state(self.cache, self.keys, user_id, HISTORY_LEN)
            if history is not None and bought is not None:
                return history, bought, "cache"
        return await asyncio.to_thread(self._state_from_store, user_id)

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
        started = time.perf_counter()
        request_id = f"{_ID_PREFIX}{next(_request_numbers):010x}"
        history, bought, history_source = await self.user_state(user_id)
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
            fallback_reason = "history unavailable" if unavailable else "unknown user: no history yet"
        elif model is None:
            code = Fallback.NO_MODEL
            fallback_reason = "no model promoted yet" + (
                f" ({self.models.last_error})" if self.models.last_error else ""
            )
        if fallback_reason or model is None:
            items = await self._popular(k, excluded)
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

        cands = await self._candidates(model, hist_pos, history_input, context_input, excluded)
        fallback = False
        try:
            scores, scorer_name = await self._score(model, cands, history_input, context_input)
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
            cands, scores, k, per_category=max(2, math.ceil(k / 2)), explore=round(k * self.settings.fresh_item_slots)
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

    async def _popular(self, k: int, excluded: set[str]) -> list[Recommended]:
        await self.baselines.ensure_trending()
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
    ) -> Candidates:
        per = self.settings.candidates_per_source
        parts: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        # Retrieval: the user tower's embedding against the item vectors (ANN).
        ann = model.model.ann
        if ann is not None:
            try:
                res = await self.scorer.infer(
                    repo.USER_TOWER_MODEL,
                    model.version,
                    {"history": history_input, "context": context_input},
                    ["user_embedding"],
                )
                scores, idx = ann.search(np.asarray(res["user_embedding"][:1], dtype=np.float32), per)
                pos = model.retrieval_positions(idx[0])
                parts.append((RETRIEVAL, pos, scores[0], None))
            except ScorerUnavailable as exc:
                log.info("retrieval skipped: %s", exc)
        # Item-item CF: neighbours of the most recent distinct items, the most recent first.
        rev = hist_pos[::-1]
        _, first = np.unique(rev, return_index=True)
        recent = rev[np.sort(first)]
        recent = recent[recent >= FIRST_ITEM][:RECENT_FOR_CF]
        cf_pos, cf_score, cf_seed = model.item_cf(recent, per)
        parts.append((ITEM_CF, cf_pos, cf_score, cf_seed))
        lists = model.baseline_positions(self.baselines.generation, self.baselines.trending, self.baselines.fresh)
        parts.append((TRENDING, lists.trending[:per], lists.trending_prior[:per], None))
        parts.append((FRESH, lists.fresh[: max(10, per // 5)], None, None))
        blocked = np.concatenate([model.table.positions(excluded), hist_pos[-JUST_SEEN:]])
        return model.merge(parts, blocked, self.settings.max_candidates)

    async def _score(
        self, model: ServingModel, cands: Candidates, history_input: np.ndarray, context_input: np.ndarray
    ) -> tuple[np.ndarray, str]:
        """Scores of the candidates, and the name of the backend that computed them.

        Candidates are padded to ``MAX_CANDIDATES``: every request has the same shape, so
        Triton's dynamic batcher and the in-process micro-batcher can run many in one go.
        """
        n = len(cands)
        if n == 0:
            return np.zeros(0, dtype=np.float32), self.scorer.name
        width = max(self.settings.max_candidates, n)
        table = model.table
        candidates = np.zeros((1, width), dtype=np.int64)
        candidates[0, :n] = table.model_index[cands.positions]
        features = np.zeros((1, width, table.features.shape[1]), dtype=np.int64)
        features[0, :n] = table.features[cands.positions]
        inputs = {
            "history": history_input,
            "context": context_input,
            "candidates": candidates,
            "candidate_features": features,
        }
        try:
            out, backend = await asyncio.wait_for(
                self.scorer.infer_with_backend(repo.RANKER_MODEL, model.version, inputs, ["scores"]),
                timeout=self.settings.scoring_timeout_ms / 1000,
            )
        except TimeoutError as exc:
            raise ScorerUnavailable(f"scoring took over {self.settings.scoring_timeout_ms} ms") from exc
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
    """The answer as an :class:`Impression` (built from values this process made: constructed, not re-validated)."""
    items = [
        ImpressedItem.model_construct(item_id=i.item_id, position=n, source=i.source, score=i.score)
        for n, i in enumerate(rec.items)
    ]
    impression = Impression.model_construct(
        schema_version=1,
        request_id=rec.request_id,
        user_id=rec.user_id,
        model_version=rec.model_version,
        experiment_id=rec.experiment_id,
        variant=rec.variant,
        fallback=rec.fallback,
        fallback_reason=rec.fallback_reason,
        scorer=rec.scorer,
        items=items,
        context=Context.model_construct(device=device, locale=locale),
        ts_ms=int(time.time() * 1000),
    )
    return impression.model_dump_json(exclude_none=True).encode()
