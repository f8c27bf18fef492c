"""The one definition of every event model and topic name that crosses a service boundary."""

from scalerec_events.experiments import Assignment, Experiment, ExperimentStatus, ExperimentVariant, VariantSplit
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
    "Assignment",
    "Context",
    "ErasureRequest",
    "Event",
    "EventType",
    "Experiment",
    "ExperimentStatus",
    "ExperimentVariant",
    "ImpressedItem",
    "Impression",
    "Item",
    "ModelAnnouncement",
    "Topic",
    "TopicSpec",
    "TrainingExample",
    "VariantSplit",
    "all_topics",
    "dlq",
]
