"""Who writes and who reads each topic, and the model its messages carry.

One table for the whole bus: docs/architecture.md and the JSON Schemas under docs/schemas/ are
generated from it (``scripts/bus_docs.py``), and tests/unit/test_bus_contracts.py checks it
against the services' code (the topics each one subscribes to and mentions), so a new producer or
consumer that is not written down here fails the tests instead of going undocumented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from scalerec_events.experiments import Experiment
from scalerec_events.models import ErasureRequest, Event, Impression, Item, ModelAnnouncement, TrainingExample
from scalerec_events.topics import Topic

Service = Literal["collector", "preprocessor", "trainer", "ranker", "evaluator"]
SERVICES: tuple[Service, ...] = ("collector", "preprocessor", "trainer", "ranker", "evaluator")


@dataclass(frozen=True)
class TopicContract:
    topic: Topic
    # Every message's value is this model as JSON (``model_dump_json``).
    payload: type[BaseModel]
    # What the message key is: it decides the partition, so one key's messages stay in order.
    key: str
    producers: tuple[Service, ...]
    consumers: tuple[Service, ...]
    purpose: str


CONTRACTS: tuple[TopicContract, ...] = (
    TopicContract(
        Topic.EVENTS_RAW,
        Event,
        "user_id",
        ("collector",),
        ("preprocessor", "evaluator"),
        "accepted user events; the evaluator joins feedback to impressions per variant",
    ),
    TopicContract(
        Topic.ITEMS,
        Item,
        "item_id",
        ("collector",),
        ("preprocessor", "ranker"),
        "catalogue upserts; the ranker keeps its item table current from them",
    ),
    TopicContract(
        Topic.ERASURE,
        ErasureRequest,
        "user_id",
        ("collector",),
        ("preprocessor", "ranker"),
        "erase a user's data from the store, every cache node, each ranker's in-process cache and future training data",
    ),
    TopicContract(
        Topic.EXAMPLES,
        TrainingExample,
        "user_id",
        ("preprocessor",),
        ("trainer",),
        "point-in-time training examples; the trainer counts them to train after TRAIN_AFTER_EXAMPLES",
    ),
    TopicContract(
        Topic.IMPRESSIONS,
        Impression,
        "user_id",
        ("ranker",),
        ("evaluator",),
        "what each recommendation answer showed: the exposure side of online metrics",
    ),
    TopicContract(
        Topic.MODELS_CANDIDATE,
        ModelAnnouncement,
        "model name",
        ("trainer",),
        ("evaluator",),
        "a new model version is in the repository, to be judged",
    ),
    TopicContract(
        Topic.MODELS_PROMOTED,
        ModelAnnouncement,
        "model name",
        ("evaluator",),
        ("ranker",),
        "the champion (newest message per model, compacted); rankers serve it",
    ),
    TopicContract(
        Topic.EXPERIMENTS,
        Experiment,
        "model name",
        ("evaluator",),
        ("ranker",),
        "the model's experiment (newest state per model, compacted); rankers route users by it",
    ),
)


def payload_models() -> list[type[BaseModel]]:
    """Every model that crosses the bus, once each, in registry order."""
    return list(dict.fromkeys(c.payload for c in CONTRACTS))
