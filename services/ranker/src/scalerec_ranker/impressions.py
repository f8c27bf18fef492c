"""Impressions to the bus in batches, off the request path.

An impression feeds online metrics; publishing one must never fail or slow a
request.  Requests append to a bounded buffer and one background task sends what
has gathered every ``interval_s`` as one batch (one bus write instead of one per
request).  When the bus is slower than the traffic, the buffer's oldest entries are
dropped and counted; what is buffered at shutdown is sent before the ranker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from scalerec_adapters.bus import OutgoingMessage, Producer
from scalerec_core.telemetry import inject_headers

log = logging.getLogger(__name__)


class ImpressionPublisher:
    def __init__(self, producer: Producer, topic: str, interval_s: float = 0.05, max_buffered: int = 50_000) -> None:
        self.producer = producer
        self.topic = topic
        self.interval_s = interval_s
        self._buffer: deque[OutgoingMessage] = deque(maxlen=max_buffered)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    def publish(self, payload: bytes, key: bytes) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(OutgoingMessage(payload, key, tuple(inject_headers())))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="impressions")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            await self.producer.send_batch(self.topic, batch)
            self.sent += len(batch)
        except Exception as exc:
            self.failed += len(batch)
            log.info("%d impressions not published: %s", len(batch), exc)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
