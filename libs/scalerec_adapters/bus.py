"""Event bus interface: topics with partitions by key, consumer groups, committed offsets.

Delivery is at-least-once: a consumer commits offsets only after the work they
cover is durably done, so a crash re-delivers and never loses.  Consumers make
their writes idempotent (by ``event_id``) so re-delivery never double-counts.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scalerec_events.topics import TopicSpec

Headers = Sequence[tuple[str, bytes]]


class BusUnavailable(RuntimeError):
    """The bus could not be reached (or did not accept a write) before the deadline."""


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class OutgoingMessage:
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=())


def partition_for(key: bytes | None, partitions: int, fallback: int = 0) -> int:
    """Stable key → partition mapping (same key, same partition, across processes and restarts)."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key) % partitions


class Producer(ABC):
    @abstractmethod
    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[int, int]:
        """Append one message; returns (partition, offset) once it is durable."""

    @abstractmethod
    async def send_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Append many messages; returns once all of them are durable."""


class Consumer(ABC):
    """A member of a consumer group reading some partitions of some topics."""

    @abstractmethod
    async def getmany(self, timeout_ms: int = 1000, max_records: int = 500) -> list[Message]:
        """Next messages after this consumer's position (starting at the group's committed offsets)."""

    @abstractmethod
    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        """Commit next-offset-to-read per (topic, partition); None commits everything returned so far."""

    @abstractmethod
    async def lag_by_partition(self) -> dict[tuple[str, int], int]:
        """Per assigned (topic, partition): messages not yet committed by the group."""

    async def lag(self) -> int:
        """Messages in the assigned partitions not yet committed by the group."""
        return sum((await self.lag_by_partition()).values())

    @abstractmethod
    async def stop(self) -> None: ...


class EventBus(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics (existing ones are left as they are)."""

    @abstractmethod
    def producer(self) -> Producer: ...

    @abstractmethod
    async def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
        """Join ``group_id``; partitions are shared among the group's live members."""

    async def healthy(self) -> bool:
        return True
