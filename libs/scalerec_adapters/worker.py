"""The consume → process → commit loop every bus consumer runs.

At-least-once: offsets are committed only after the handler returned, i.e. after
its writes are durable.  Transient failures (a store or bus that is down) are
retried with backoff for as long as it takes — nothing is dropped; messages the
handler declares poison go to the topic's dead-letter twin with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from scalerec_core.telemetry import meter
from scalerec_events.topics import dlq

from scalerec_adapters.bus import Consumer, EventBus, Message

log = logging.getLogger(__name__)


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
        name: str = "worker",
    ) -> None:
        self.bus = bus
        self.topics = list(topics)
        self.group_id = group_id
        self.handler = handler
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.max_backoff_s = max_backoff_s
        self.name = name
        self.consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.processed = 0
        self.dead_lettered = 0
        self.failing = False
        m = meter("scalerec.worker")
        self._processed_counter = m.create_counter("bus.messages.processed")
        self._dlq_counter = m.create_counter("bus.messages.dead_lettered")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-consumer")

    async def stop(self) -> None:
        self._stopping.set()
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
        while not self._stopping.is_set():
            try:
                if self.consumer is None:
                    self.consumer = await self.bus.consumer(self.topics, self.group_id)
                messages = await self.consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
                if not messages:
                    continue
                result = await self.handler(messages)
                if result.poison:
                    await self._dead_letter(result.poison)
                await self.consumer.commit()
                self.processed += len(messages)
                self._processed_counter.add(len(messages), {"worker": self.name})
                self.failing = False
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not committed: the same messages come back after the backoff (or to another member).
                self.failing = True
                log.warning("%s: batch failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__, exc, backoff)
                await self._reset_consumer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff * (1 + random.random() * 0.2))
                backoff = min(self.max_backoff_s, backoff * 2)

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
        self._dlq_counter.add(len(poison), {"worker": self.name})
