"""Baseline signals that need no model: trending items and fresh items, refreshed in the background.

They are the fallback when a model is missing or a backend is down, and two of
the candidate sources when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from scalerec_adapters.store import WideColumnStore
from scalerec_storage import records as r

log = logging.getLogger(__name__)


class Baselines:
    def __init__(self, store: WideColumnStore, refresh_seconds: int, trending_days: int = 7) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.trending_days = trending_days
        self.trending: list[tuple[str, float]] = []
        self.fresh: list[str] = []
        self.refreshed_at: datetime | None = None
        self._last_attempt = 0.0
        self._task: asyncio.Task[None] | None = None

    def ensure_trending(self, min_interval_s: float = 2.0) -> None:
        """Refresh now if there is nothing to fall back on yet (a ranker started before any data).

        Without this, a fallback answer could be empty until the next periodic refresh.
        """
        if self.trending or time.monotonic() - self._last_attempt < min_interval_s:
            return
        try:
            self.refresh()
        except Exception as exc:
            log.warning("on-demand baseline refresh failed: %s", exc)

    def refresh(self) -> None:
        self._last_attempt = time.monotonic()
        since = (datetime.now(UTC) - timedelta(days=self.trending_days)).strftime("%Y%m%d")
        scores = r.item_scores(self.store, since_day=since)
        if len(scores) < 50:  # a quiet week: fall back to all-time popularity
            scores = r.item_scores(self.store)
        self.trending = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:2000]
        self.fresh = r.fresh_items(self.store, 200)
        self.refreshed_at = datetime.now(UTC)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="baselines-refresh")

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # keep serving the last good lists
                log.warning("baseline refresh failed, keeping the previous lists: %s", exc)
            await asyncio.sleep(self.refresh_seconds)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
