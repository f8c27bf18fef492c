"""The one definition of every event model and topic name that crosses a service boundary."""

from scalerec_events.models import (
    MAX_FUTURE_SKEW,
    SCHEMA_VERSION,
    Context,
    ErasureRequest,
    Event,
    EventType,
    ImpressedItem,
    Impression,
    Item,
    ModelAnnouncement,
    TrainingExample,
)
from scalerec_events.topics import Topic, TopicSpec, all_topics, dlq

__all__ = [
    "MAX_FUTURE_SKEW",
    "SCHEMA_VERSION",
    "Context",
    "ErasureRequest",
    "Event",
    "EventType",
    "ImpressedItem",
    "Impression",
    "Item",
    "ModelAnnouncement",
    "Topic",
    "TopicSpec",
    "TrainingExample",
    "all_topics",
    "dlq",
]
