"""Baseline signals that need no model: trending items and fresh items, refreshed in the background.

They are the fallback when a model is missing or a backend is down, and two of
the candidate sources when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        # Bumped on every refresh, so serving tables re-derive their position arrays only then.
        self.generation = 0
        self._last_attempt = 0.0
        self._task: asyncio.Task[None] | None = None
        self._on_demand: asyncio.Task[None] | None = None

    async def ensure_trending(self, wait_s: float = 0.5, min_interval_s: float = 2.0) -> None:
        """Refresh soon if there is nothing to fall back on yet (a ranker started before any data).

        However many requests find the list empty, one refresh runs (in a thread), and each request
        waits for it at most ``wait_s``: an empty list never turns a burst of requests into a burst
        of scans.
        """
        if self.trending:
            return
        task = self._on_demand
        if task is None or task.done():
            if time.monotonic() - self._last_attempt < min_interval_s:
                return
            task = self._on_demand = asyncio.create_task(self._refresh_logged(), name="baselines-on-demand")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=wait_s)

    async def _refresh_logged(self) -> None:
        try:
            await asyncio.to_thread(self.refresh)
        except Exception as exc:
            log.warning("on-demand baseline refresh failed: %s", exc)

    def refresh(self) -> None:
        self._last_attempt = time.monotonic()
        since = (datetime.now(UTC) - timedelta(days=self.trending_days)).strftime("%Y%m%d")
        scores = r.item_scores(self.store, since_day=since)
        if len(scores) < 50:  # a quiet week: fall back to all-time popularity
            scores = r.item_scores(self.store)
        trending = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:2000]
        fresh = r.fresh_items(self.store, 200)
        # Two assignments and a counter: a reader sees the old or the new lists, never a mix for long.
        self.trending, self.fresh = trending, fresh
        self.generation += 1
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
        for task in (self._task, self._on_demand):
            if task:
                task.cancel()
