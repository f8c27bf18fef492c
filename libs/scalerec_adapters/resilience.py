"""Circuit breaker and retry for calls to remote backends (Triton, and any other peer).

Why a breaker: when Triton is down, every request would otherwise wait for its full
deadline before falling back, multiplying latency and piling up in-flight calls.
After ``failure_threshold`` consecutive failures the breaker opens and callers fail
fast (and fall back at once); after ``reset_timeout`` one probe call is let through
(half-open) and its outcome closes or re-opens the breaker.

Why a bounded retry: a swap or a restart produces short, transient errors
(UNAVAILABLE, model version momentarily not ready); one quick retry hides them
without turning an outage into a retry storm (the breaker caps that).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(RuntimeError):
    """Raised instead of calling a backend the breaker considers down."""


class CircuitBreaker:
    """Consecutive-failure circuit breaker for one backend; safe from the event loop and from threads
    (the ranker's store reads record their outcome in the worker thread that ran them)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go through now; in half-open state only one probe at a time."""
        if self._opened_at is None:  # the hot path: closed, no lock
            return True
        with self._lock:
            state = self.state
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        if self._opened_at is None and not self._failures:  # the hot path: nothing to reset
            return
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probe_in_flight or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
            self._probe_in_flight = False

    def reset(self) -> None:
        self.record_success()

    async def call(self, fn: Callable[[], Awaitable[T]], *, is_failure: Callable[[BaseException], bool]) -> T:
        """Run ``fn`` through the breaker; exceptions for which ``is_failure`` is false (bad input) do not count."""
        if not self.allow():
            raise CircuitOpen(
                f"circuit open after {self._failures} consecutive failures; retrying in ≤{self.reset_timeout}s"
            )
        try:
            result = await fn()
        except BaseException as exc:
            if is_failure(exc):
                self.record_failure()
            else:
                self._probe_in_flight = False
            raise
        self.record_success()
        return result


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 2,
    backoff: float = 0.01,
    retry_on: Callable[[BaseException], bool],
    deadline: float | None = None,
) -> T:
    """Call ``fn`` up to ``attempts`` times while ``retry_on(exc)``; jittered exponential backoff.

    ``deadline`` (a ``time.monotonic()`` value) stops retrying once the caller's budget is spent.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except BaseException as exc:
            last = attempt == attempts or not retry_on(exc)
            delay = backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
            if last or (deadline is not None and time.monotonic() + delay >= deadline):
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
