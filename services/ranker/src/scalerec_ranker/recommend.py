"""candidates → features → score → re-rank → explain.

Every step degrades instead of failing: no history or no model → trending
(flagged); the store down → history from the cache, else trending (flagged); the
scorer down → the candidates in baseline order (flagged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scalerec_adapters.cache import Cache, CacheKeys
from scalerec_adapters.scoring import Scorer, ScorerUnavailable
from scalerec_adapters.store import WideColumnStore
from scalerec_events.models import EventType, Item
from scalerec_features import FEATURE_VERSION, HISTORY_LEN, context_features, item_feature_vector
from scalerec_models import repository as repo
from scalerec_models.runtime import ModelVersion
from scalerec_storage import records as r

from scalerec_ranker.baselines import Baselines
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.models import ModelManager

log = logging.getLogger(__name__)

RECENT_FOR_CF = 10


@dataclass
class Candidate:
    item_id: str
    source: str
    because: str | None = None
    prior: float = 0.0


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

    # ------------------------------------------------------------ data access (cache ▸ store)

    def _history(self, user_id: str) -> tuple[list[r.HistoryEntry], set[str], str]:
        """Recent history (cache ▸ store), every item ever bought, and where the history came from."""
        try:
            history, source = r.cached_history(self.store, self.cache, self.keys, user_id, HISTORY_LEN)
        except Exception as exc:
            log.warning("history of %s unavailable (%s); serving without it", user_id, exc)
            return [], set(), "unavailable"
        bought = {h.item_id for h in history if h.type == EventType.PURCHASE.value}
        try:
            bought |= r.purchased_items(self.store, user_id)
        except Exception as exc:  # the recent history still excludes the recent purchases
            log.warning("purchases of %s unavailable (%s)", user_id, exc)
        return history, bought, source

    def items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Catalogue entries, hot ones from the cache."""
        keys = {i: self.keys.key("item", FEATURE_VERSION, i) for i in item_ids}
        found: dict[str, Item] = {}
        try:
            hits = self.cache.get_many(list(keys.values()))
        except Exception:
            hits = {}
        for item_id, key in keys.items():
            if key in hits:
                found[item_id] = Item.model_validate_json(hits[key])
        missing = [i for i in item_ids if i not in found]
        if missing:
            try:
                fetched = r.get_items(self.store, missing)
            except Exception as exc:
                log.warning("catalogue unavailable (%s)", exc)
                fetched = {}
            found.update(fetched)
            if fetched:
                with contextlib.suppress(Exception):
                    self.cache.set_many({keys[i]: it.model_dump_json().encode() for i, it in fetched.items()}, 600)
        return found

    # ------------------------------------------------------------ the request

    async def recommend(
        self, user_id: str, k: int, device: str | None, locale: str | None, exclude: Sequence[str] = ()
    ) -> Recommendation:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        model = self.models.current  # one reference for the whole request (hot swap safe)
        history, bought, history_source = await asyncio.to_thread(self._history, user_id)
        now_ms = int(time.time() * 1000)
        context = context_features(now_ms, device, locale)
        excluded = bought | set(exclude)
        seen = [h.item_id for h in history if h.type != EventType.IMPRESSION.value]

        fallback_reason = None
        if not seen:
            fallback_reason = (
                "unknown user: no history yet" if history_source != "unavailable" else "history unavailable"
            )
        elif model is None:
            fallback_reason = "no model promoted yet" + (
                f" ({self.models.last_error})" if self.models.last_error else ""
            )
        if fallback_reason:
            items = await asyncio.to_thread(self._popular, k, excluded)
            return Recommendation(
                request_id, user_id, items, None, True, fallback_reason, "baseline", history_source, _ms(started)
            )

        assert model is not None
        candidates = await self._candidates(model, seen, context, excluded)
        catalogue = await asyncio.to_thread(self.items, [c.item_id for c in candidates])
        candidates = [c for c in candidates if c.item_id in catalogue and catalogue[c.item_id].available]
        fallback = False
        try:
            scores, scorer_name = await self._score(model, seen, context, candidates, catalogue)
        except ScorerUnavailable as exc:
            log.warning("scoring failed for %s, using baseline order: %s", user_id, exc)
            scores = np.array([c.prior for c in candidates], dtype=np.float32)
            scorer_name, fallback, fallback_reason = "baseline", True, f"scorer unavailable: {exc}"
        primary = self.scorer.name.split(">")[0]
        if not fallback and scorer_name != primary:
            fallback, fallback_reason = True, f"{primary} unavailable; scored by {scorer_name}"
        ranked = self._rerank(candidates, scores, catalogue, k)
        because = {c.item_id: c.because or model.most_similar_history(c.item_id, seen) for c, _ in ranked}
        titles = await asyncio.to_thread(self.items, sorted({b for b in because.values() if b}))
        items = [self._explain(c, s, catalogue, because[c.item_id], titles) for c, s in ranked]
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
        )

    # ------------------------------------------------------------ steps

    def _popular(self, k: int, excluded: set[str]) -> list[Recommended]:
        self.baselines.ensure_trending()
        top = [(i, s) for i, s in self.baselines.trending if i not in excluded][: k * 2]
        catalogue = self.items([i for i, _ in top])
        out = []
        for item_id, score in top:
            item = catalogue.get(item_id)
            if item is not None and not item.available:
                continue
            out.append(
                Recommended(
                    item_id,
                    float(score),
                    "trending",
                    "Popular right now",
                    [],
                    item.title if item else "",
                    item.category if item else "",
                )
            )
            if len(out) == k:
                break
        return out

    async def _candidates(
        self, model: ModelVersion, seen: list[str], context: list[int], excluded: set[str]
    ) -> list[Candidate]:
        per = self.settings.candidates_per_source
        out: dict[str, Candidate] = {}

        def add(c: Candidate) -> None:
            if c.item_id not in excluded and c.item_id not in out:
                out[c.item_id] = c

        # Retrieval: the user tower's embedding against the item vectors (ANN).
        if model.ann is not None:
            try:
                res = await self.scorer.infer(
                    repo.USER_TOWER_MODEL, model.version, model.encode_user([seen], [context]), ["user_embedding"]
                )
                for item_id, s in model.nearest_items(res["user_embedding"][0], per):
                    add(Candidate(item_id, "retrieval", model.most_similar_history(item_id, seen), s))
            except ScorerUnavailable as exc:
                log.info("retrieval skipped: %s", exc)
        # Item-item CF: neighbours of the most recent items.
        if model.neighbors:
            pooled: dict[str, tuple[float, str]] = {}
            for weight, seed in enumerate(reversed(seen[-RECENT_FOR_CF:])):
                for item_id, s in model.neighbors.get(seed, [])[:per]:
                    v = s / (1 + weight)
                    if item_id not in pooled or pooled[item_id][0] < v:
                        pooled[item_id] = (v, seed)
            for item_id, (v, seed) in sorted(pooled.items(), key=lambda kv: -kv[1][0])[:per]:
                add(Candidate(item_id, "item_cf", seed, v))
        for item_id, s in self.baselines.trending[:per]:
            add(Candidate(item_id, "trending", None, math.log1p(s) / 100))
        for item_id in self.baselines.fresh[: max(10, per // 5)]:
            add(Candidate(item_id, "fresh", None, 0.0))
        seen_set = set(seen[-5:])  # just-seen items are not news
        return [c for c in out.values() if c.item_id not in seen_set][: self.settings.max_candidates]

    async def _score(
        self,
        model: ModelVersion,
        seen: list[str],
        context: list[int],
        candidates: list[Candidate],
        catalogue: dict[str, Item],
    ) -> tuple[np.ndarray, str]:
        """Scores of the candidates, and the name of the backend that computed them."""
        if not candidates:
            return np.zeros(0, dtype=np.float32), self.scorer.name
        feats = [_features(catalogue[c.item_id]) for c in candidates]
        inputs = model.encode([seen], [context], [[c.item_id for c in candidates]], [feats])
        try:
            out, backend = await asyncio.wait_for(
                self.scorer.infer_with_backend(repo.RANKER_MODEL, model.version, inputs, ["scores"]),
                timeout=self.settings.scoring_timeout_ms / 1000,
            )
        except TimeoutError as exc:
            raise ScorerUnavailable(f"scoring took over {self.settings.scoring_timeout_ms} ms") from exc
        return np.asarray(out["scores"][0][: len(candidates)], dtype=np.float32), backend

    def _rerank(
        self, candidates: list[Candidate], scores: np.ndarray, catalogue: dict[str, Item], k: int
    ) -> list[tuple[Candidate, float]]:
        """Best first, at most half the slots per category, and a share of slots for fresh items."""
        order = np.argsort(-scores, kind="stable")
        per_category = max(2, math.ceil(k / 2))
        explore = round(k * self.settings.fresh_item_slots)
        picked: list[tuple[Candidate, float]] = []
        counts: dict[str, int] = {}
        fresh_pool = [i for i in order if candidates[i].source == "fresh"]
        for i in order:
            c = candidates[i]
            if c.source == "fresh" and explore:
                continue  # fresh items compete for the exploration slots below
            cat = catalogue[c.item_id].category
            if counts.get(cat, 0) >= per_category:
                continue
            picked.append((c, float(scores[i])))
            counts[cat] = counts.get(cat, 0) + 1
            if len(picked) == k - min(explore, len(fresh_pool)):
                break
        for i in fresh_pool[:explore]:
            if len(picked) >= k:
                break
            picked.append((candidates[i], float(scores[i])))
        if len(picked) < k:  # the diversity cap was too strict for this candidate set
            chosen = {c.item_id for c, _ in picked}
            for i in order:
                if candidates[i].item_id not in chosen:
                    picked.append((candidates[i], float(scores[i])))
                    if len(picked) == k:
                        break
        return picked

    def _explain(
        self, c: Candidate, score: float, catalogue: dict[str, Item], because: str | None, known: dict[str, Item]
    ) -> Recommended:
        item = catalogue[c.item_id]
        ref = known.get(because) if because else None
        because_title = (ref.title or because) if ref else because
        if c.source == "fresh":
            reason = f"New in {item.category}" + (f", like {because_title}" if because_title else "")
        elif because_title:
            reason = f"Because you viewed {because_title}"
        elif c.source == "trending":
            reason = "Popular right now"
        else:
            reason = "Matches your recent activity"
        return Recommended(c.item_id, score, c.source, reason, [because] if because else [], item.title, item.category)


def _features(item: Item) -> list[int]:
    return item_feature_vector(item.category, item.price, item.title, item.text)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def impression_payload(rec: Recommendation, device: str | None) -> bytes:
    return json.dumps(
        {
            "request_id": rec.request_id,
            "user_id": rec.user_id,
            "model_version": rec.model_version,
            "fallback": rec.fallback,
            "device": device,
            "items": [i.item_id for i in rec.items],
            "sources": [i.source for i in rec.items],
            "ts_ms": int(time.time() * 1000),
        }
    ).encode()
