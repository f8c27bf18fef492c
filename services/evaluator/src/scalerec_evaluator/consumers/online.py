"""Online metrics per model version: impressions from the ranker, clicks and conversions attributed to them.

Feedback events carry ``context.model_version`` and ``context.request_id`` (the
recommendation they answer), so CTR and conversion rate are measured per variant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import ValidationError
from scalerec_adapters.bus import Message
from scalerec_adapters.worker import BatchResult
from scalerec_events.labels import is_conversion
from scalerec_events.models import Event, EventType, Impression


class OnlineMetrics:
    def __init__(self, *, impressions_topic: str) -> None:
        # Impressions and feedback events arrive through one group; the topic tells them apart.
        self.impressions_topic = impressions_topic
        self.impressions: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        self.clicks: dict[str, int] = defaultdict(int)
        self.conversions: dict[str, int] = defaultdict(int)

    async def handle(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        for m in messages:
            try:
                if m.topic == self.impressions_topic:
                    imp = Impression.model_validate_json(m.value)
                    variant = _variant(imp.model_version, imp.fallback)
                    self.requests[variant] += 1
                    self.impressions[variant] += len(imp.items)
                else:
                    ev = Event.model_validate_json(m.value)
                    if ev.context.request_id is None:
                        continue
                    variant = _variant(ev.context.model_version, ev.context.model_version is None)
                    if ev.type is EventType.CLICK:
                        self.clicks[variant] += 1
                    elif is_conversion(ev.type, ev.value):
                        self.conversions[variant] += 1
            except (ValidationError, ValueError) as exc:
                result.poison.append((m, f"unreadable: {exc}"))
        return result

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for variant in sorted(set(self.requests) | set(self.clicks)):
            imps = self.impressions.get(variant, 0)
            out[variant] = {
                "requests": self.requests.get(variant, 0),
                "impressions": imps,
                "clicks": self.clicks.get(variant, 0),
                "conversions": self.conversions.get(variant, 0),
                "ctr": self.clicks.get(variant, 0) / imps if imps else 0.0,
                "conversion_rate": self.conversions.get(variant, 0) / imps if imps else 0.0,
            }
        return out


def _variant(version: int | None, fallback: bool) -> str:
    return "baseline" if fallback or version is None else f"model_v{version}"
