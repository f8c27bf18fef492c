"""The consume → process → commit loop every bus consumer runs.

At-least-once: offsets are committed only after the handler returned, i.e. after
its writes are durable.  Transient failures (a store or bus that is down) are
retried with backoff for as long as it takes — nothing is dropped; messages the
handler declares poison go to the topic's dead-letter twin with the reason.

A message that parses but makes the handler fail deterministically (any exception
that is not a backend being away) must not block its partition forever: the batch
is then retried one message at a time, and a message that fails ``max_retries``
attempts goes to the dead-letter topic with the exception as the reason, and the
partition moves on.  Retries re-run the batch the worker already holds: the worker
stays in its consumer group (leaving and rejoining for each retry would rebalance
every other member of the group each time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation
from pydantic import BaseModel, ValidationError
from scalerec_core.telemetry import batch_span, meter, on_scrape
from scalerec_events.topics import dlq

from scalerec_adapters.bus import BusUnavailable, Consumer, EventBus, Message
from scalerec_adapters.resilience import CircuitOpen
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.store import StoreUnavailable

log = logging.getLogger(__name__)


class RetryLater(RuntimeError):
    """The handler undid its batch on purpose (another writer raced it) and wants it run again."""


# A backend that is away: retried for as long as it takes, never counted towards ``max_retries``.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RetryLater,
    OSError,  # ConnectionError, TimeoutError
    StoreUnavailable,
    BusUnavailable,
    ScorerUnavailable,
    CircuitOpen,
)
DEFAULT_MAX_RETRIES = 5
DEFAULT_STALL_AFTER_S = 30.0


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


class _Stopping(Exception):
    """The worker was asked to stop while retrying: leave the batch uncommitted."""


@dataclass
class BatchResult:
    """What a handler did with a batch: messages it could not process, with why."""

    poison: list[tuple[Message, str]] = field(default_factory=list)


Handler = Callable[[Sequence[Message]], Awaitable[BatchResult]]

M = TypeVar("M", bound=BaseModel)


def parse_batch(messages: Sequence[Message], model: type[M], what: str) -> tuple[list[tuple[Message, M]], BatchResult]:
    """Decode every message as ``model``; the ones that do not parse are poison, with the reason."""
    parsed: list[tuple[Message, M]] = []
    result = BatchResult()
    for message in messages:
        try:
            parsed.append((message, model.model_validate_json(message.value)))
        except ValidationError as exc:
            result.poison.append((message, f"invalid {what}: {exc.errors()[0].get('msg', exc)}"))
    return parsed, result


_LIVE: weakref.WeakSet[ConsumerWorker] = weakref.WeakSet()


def _observe_lag(_: CallbackOptions) -> Iterable[Observation]:
    for worker in list(_LIVE):
        for (topic, partition), lag in worker.lags.items():
            yield Observation(lag, {"group": worker.group_id, "topic": topic, "partition": partition})


@functools.cache
def _instruments() -> tuple[Any, Any, Any]:
    """The workers' instruments, made once per process (every worker reports into the same ones)."""
    m = meter("scalerec.worker")
    processed = m.create_counter(
        "scalerec.bus.messages.processed", unit="{message}", description="Bus messages processed and committed"
    )
    dead_lettered = m.create_counter(
        "scalerec.bus.messages.dead_lettered", unit="{message}", description="Bus messages sent to a dead-letter topic"
    )
    rejoins = m.create_counter(
        "scalerec.bus.consumer.rejoins",
        unit="{rejoin}",
        description="Group rejoins after a member polled nothing for 30 s while messages waited uncommitted",
    )
    m.create_observable_gauge(
        "scalerec.bus.consumer.lag",
        callbacks=[_observe_lag],
        unit="{message}",
        description="Messages not yet committed by the consumer group, per partition (read at scrape time)",
    )
    return processed, dead_lettered, rejoins


class ConsumerWorker:
    def __init__(
        self,
        bus: EventBus,
        topics: Sequence[str],
        group_id: str,
        handler: Handler,
        *,
        max_records: int = 500,
        poll_timeout_ms: int = 500,
        max_backoff_s: float = 10.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        name: str = "worker",
    ) -> None:
        self.bus = bus
        self.topics = list(topics)
        self.group_id = group_id
        self.handler = handler
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.max_backoff_s = max_backoff_s
        # Attempts a message gets before it is dead-lettered (0 behaves as 1: no retry).
        self.max_retries = max(1, max_retries)
        # Polls that return nothing for this long while the group lags: the client is wedged; rejoin.
        self.stall_after_s = stall_after_s
        self.stall_resets = 0
        self.name = name
        self.consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.processed = 0
        self.dead_lettered = 0
        self.failing = False
        self._processed_counter, self._dlq_counter, self._rejoin_counter = _instruments()
        #: Last known lag per (topic, partition), refreshed before every /metrics scrape.
        self.lags: dict[tuple[str, int], int] = {}
        self._forget_scrape_hook: Callable[[], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-consumer")
        _LIVE.add(self)
        # Series exist from the start (at 0), so dashboards and alerts see "none yet", not "no data".
        self._rejoin_counter.add(0, {"worker": self.name, "group": self.group_id})
        for topic in self.topics:
            self._processed_counter.add(0, {"worker": self.name, "group": self.group_id})
            self._dlq_counter.add(0, {"worker": self.name, "topic": topic})
        self._forget_scrape_hook = on_scrape(self._refresh_lag)

    async def _refresh_lag(self) -> None:
        if self.consumer is not None:
            self.lags = await self.consumer.lag_by_partition()

    async def stop(self) -> None:
        self._stopping.set()
        _LIVE.discard(self)
        if self._forget_scrape_hook is not None:
            self._forget_scrape_hook()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout=15)
            except TimeoutError:
                self._task.cancel()
        if self.consumer:
            await self.consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def lag(self) -> int:
        return await self.consumer.lag() if self.consumer else 0

    async def _run(self) -> None:
        backoff = 0.2
        loop = asyncio.get_running_loop()
        last_messages = loop.time()  # when a poll last returned something (or the consumer was made)
        while not self._stopping.is_set():
            try:
                if self.consumer is None:
                    self.consumer = await self.bus.consumer(self.topics, self.group_id)
                    last_messages = loop.time()
                messages = await self.consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
                if not messages:
                    # The bus answers and nothing waits (the batch a failed commit left may have been
                    # committed after all, or handled by the member that took the partition).
                    self.failing = False
                    if loop.time() - last_messages >= self.stall_after_s:
                        last_messages = loop.time()
                        await self._check_stalled()
                    continue
                last_messages = loop.time()
                try:
                    result = await self._handle(messages)
                except _Stopping:
                    return  # not committed: another member (or the next start) reads the batch again
                if result.poison:
                    await self._dead_letter(result.poison)
                await self.consumer.commit()
                self.processed += len(messages)
                self._processed_counter.add(len(messages), {"worker": self.name, "group": self.group_id})
                self.failing = False
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The bus itself failed (poll, dead-letter or commit): rejoin from the committed offsets so
                # uncommitted messages are read again.
                self.failing = True
                log.warning("%s: bus failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__, exc, backoff)
                await self._reset_consumer()
                await self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    async def _handle(self, messages: Sequence[Message]) -> BatchResult:
        """Run the handler over a batch the worker holds until it succeeds; isolate and dead-letter poison."""
        try:
            return await self._attempt(messages)
        except _Deterministic as first:
            if len(messages) == 1:
                return await self._retry_one(messages[0], first.cause, attempts=1)
            log.warning(
                "%s: batch of %d failed (%s); retrying its messages one at a time",
                self.name,
                len(messages),
                _reason(first.cause),
            )
        result = BatchResult()
        for message in messages:
            try:
                one = await self._attempt([message])
            except _Deterministic as failure:
                # The batch attempt counts as this message's first.
                one = await self._retry_one(message, failure.cause, attempts=2)
            result.poison.extend(one.poison)
        return result

    async def _retry_one(self, message: Message, cause: Exception, attempts: int) -> BatchResult:
        backoff = 0.2
        while attempts < self.max_retries:
            log.warning(
                "%s: %s/%d/%d failed (attempt %d of %d): %s",
                self.name,
                message.topic,
                message.partition,
                message.offset,
                attempts,
                self.max_retries,
                _reason(cause),
            )
            await self._sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
            attempts += 1
            try:
                return await self._attempt([message])
            except _Deterministic as failure:
                cause = failure.cause
        return BatchResult(poison=[(message, f"failed {attempts} attempts: {_reason(cause)}")])

    async def _attempt(self, messages: Sequence[Message]) -> BatchResult:
        """One handler call; transient failures are retried here with backoff, without limit and uncounted."""
        backoff = 0.2
        while True:
            if self._stopping.is_set():
                raise _Stopping
            try:
                # One span per handler call, linked to the trace of every message (not only the first).
                with batch_span(
                    f"{self.name} process",
                    [m.headers for m in messages],
                    **{
                        "messaging.operation.type": "process",
                        "messaging.consumer.group.name": self.group_id,
                        "messaging.batch.message_count": len(messages),
                    },
                ):
                    result = await self.handler(messages)
                self.failing = False
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise _Deterministic(exc) from exc
                self.failing = True
                log.warning("%s: batch failed (%s); retrying in %.1fs", self.name, _reason(exc), backoff)
                await self._sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds * (1 + random.random() * 0.2))

    async def _check_stalled(self) -> None:
        """Nothing polled for ``stall_after_s``: if the group still lags, rejoin from the committed offsets.

        A Kafka client can come out of a broker restart with a partition it no longer fetches (the
        coordinator rediscovered, the fetch position lost) and poll empty forever without an error:
        the messages wait on the broker, uncommitted, and nothing would ever read them.  Idle polls
        with nothing waiting are normal and cost one lag query per ``stall_after_s``.
        """
        if self.consumer is None:
            return
        try:
            waiting = await asyncio.wait_for(self.consumer.lag(), timeout=10)
        except Exception as exc:  # the bus is away: the poll loop's own retries deal with that
            log.debug("%s: lag check failed (%r)", self.name, exc)
            return
        if waiting > 0:
            self.stall_resets += 1
            self._rejoin_counter.add(1, {"worker": self.name, "group": self.group_id})
            log.warning(
                "%s: no message polled for %.0fs while %d wait uncommitted; rejoining the group",
                self.name,
                self.stall_after_s,
                waiting,
            )
            await self._reset_consumer()

    async def _reset_consumer(self) -> None:
        """Rejoin from the committed offsets so uncommitted messages are read again."""
        if self.consumer is not None:
            try:
                await self.consumer.stop()
            except Exception:
                log.debug("%s: consumer stop failed during reset", self.name, exc_info=True)
            self.consumer = None

    async def _dead_letter(self, poison: list[tuple[Message, str]]) -> None:
        producer = self.bus.producer()
        for message, reason in poison:
            headers = (
                *message.headers,
                ("x-dlq-reason", reason.encode()[:1000]),
                ("x-dlq-source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
            )
            await producer.send(dlq(message.topic), message.value, key=message.key, headers=headers)
            log.warning(
                "%s: dead-lettered %s/%d/%d: %s", self.name, message.topic, message.partition, message.offset, reason
            )
        self.dead_lettered += len(poison)
        for message, _ in poison:
            self._dlq_counter.add(1, {"worker": self.name, "topic": message.topic})


class _Deterministic(Exception):
    """The handler failed with an error that is not a backend being away: retrying will likely fail again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
