"""A bounded memory of recent event ids, to drop client retries before they reach the bus.

The preprocessor dedupes for real (by event_id in the store); this only saves
the bus from the common case of a client re-sending a batch it did not see
acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from scalerec_events.models import Event


def dedupe_key(event: Event) -> str:
    """(user, event id): ``/`` is not in the id alphabet, so two different pairs never share a key."""
    return f"{event.user_id}/{event.event_id}"


class RecentIds:
    """Keys of events published lately, and of those being published now.

    A request whose events another request of this process is publishing at the same moment (a client
    that retried before its first try was answered) waits for that one's outcome instead of publishing
    them a second time: sent, they are duplicates; refused (the bus unavailable), it is refused too, at
    the same moment — not queued for a try of its own after the first one's timeout.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._publishing: dict[str, asyncio.Future[bool]] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def publishing(self, key: str) -> asyncio.Future[bool] | None:
        """Done once the request publishing ``key`` now has its answer (True: published); None when none is."""
        return self._publishing.get(key) if self.capacity > 0 else None

    @contextmanager
    def claim(self, keys: list[str]) -> Iterator[None]:
        """Mark ``keys`` as being published for the body's duration (those waiting on them wake after)."""
        if self.capacity <= 0:
            yield
            return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._publishing[key] = done
        published = False
        try:
            yield
            published = True
        finally:
            for key in keys:
                if self._publishing.get(key) is done:
                    del self._publishing[key]
            done.set_result(published)

    def add_all(self, ids: list[str]) -> None:
        if self.capacity <= 0:
            return
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
