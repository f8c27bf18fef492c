"""A bounded memory of recent event ids, to drop client retries before they reach the bus.

The preprocessor dedupes for real (by event_id in the store); this only saves
the bus from the common case of a client re-sending a batch it did not see
acknowledged.
"""

from __future__ import annotations

from collections import OrderedDict

from scalerec_events.models import Event


def dedupe_key(event: Event) -> str:
    """(user, event id): ``/`` is not in the id alphabet, so two different pairs never share a key."""
    return f"{event.user_id}/{event.event_id}"


class RecentIds:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add_all(self, ids: list[str]) -> None:
        if self.capacity <= 0:
            return
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
