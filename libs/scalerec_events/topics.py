"""Topic registry: ``scalerec.<entity>.<kind>.v<major>``, each with a ``.dlq`` twin."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    EVENTS_RAW = "scalerec.events.raw.v1"
    ITEMS = "scalerec.items.upsert.v1"
    ERASURE = "scalerec.users.erasure.v1"
    EXAMPLES = "scalerec.training.examples.v1"
    IMPRESSIONS = "scalerec.events.impressions.v1"
    MODELS_CANDIDATE = "scalerec.models.candidate.v1"
    MODELS_PROMOTED = "scalerec.models.promoted.v1"


def dlq(topic: str) -> str:
    """Dead-letter twin of ``topic``: messages that could not be processed, with the reason in a header."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int | None = None


# Model announcements are rare and must be seen by every ranker replica: one partition keeps them ordered.
_SINGLE_PARTITION = {Topic.MODELS_CANDIDATE, Topic.MODELS_PROMOTED}


def all_topics(partitions: int) -> list[TopicSpec]:
    """Every topic and its dead-letter topic, with ``partitions`` for the keyed data topics."""
    specs: list[TopicSpec] = []
    for topic in Topic:
        n = 1 if topic in _SINGLE_PARTITION else partitions
        specs.append(TopicSpec(topic.value, n))
        specs.append(TopicSpec(dlq(topic.value), 1))
    return specs
