"""Topic registry: ``<deployment>.<entity>.<kind>.v<major>``, each with a ``.dlq`` twin.

The deployment (``DEPLOYMENT``, ``scalerec`` by default) is the first part of every name,
so two deployments sharing one Kafka never read each other's events; the default
deployment keeps the names ``scalerec.events.raw.v1``, ... it always had.  A
:class:`Topic` is only the deployment-free part: it is not a string, so passing one
where a topic name is expected fails type checking instead of silently using the
default deployment's topic.  :func:`topic_name` (or ``ServiceSettings.topic``) makes
the name; nothing else builds one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

# The deployment every name falls back to (ServiceSettings.deployment's default).
DEFAULT_DEPLOYMENT = "scalerec"
# Letters, digits, '_' and '-': legal in Kafka topic and group names, HBase table names and
# Memcached keys alike ('.' is left out so the deployment is always the first dotted part).
DEPLOYMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Topic(Enum):
    EVENTS_RAW = "events.raw.v1"
    ITEMS = "items.upsert.v1"
    ERASURE = "users.erasure.v1"
    EXAMPLES = "training.examples.v1"
    IMPRESSIONS = "events.impressions.v1"
    MODELS_CANDIDATE = "models.candidate.v1"
    MODELS_PROMOTED = "models.promoted.v1"
    EXPERIMENTS = "experiments.state.v1"


def topic_name(topic: Topic, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """The Kafka (or embedded bus) name of ``topic`` in ``deployment``."""
    if not re.match(DEPLOYMENT_PATTERN, deployment):
        raise ValueError(f"deployment {deployment!r} must match {DEPLOYMENT_PATTERN}")
    return f"{deployment}.{topic.value}"


def dlq(topic: str) -> str:
    """Dead-letter twin of ``topic``: messages that could not be processed, with the reason in a header."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int | None = None
    # Kafka topic configs beyond retention (cleanup.policy, ...); the embedded bus ignores them.
    configs: dict[str, str] = field(default_factory=dict)


# Model announcements are rare and must be seen by every ranker replica: one partition keeps them ordered.
_SINGLE_PARTITION = {Topic.MODELS_CANDIDATE, Topic.MODELS_PROMOTED, Topic.EXPERIMENTS}
# Only the newest announcement (and experiment state) per model matters to a ranker that (re)starts: compaction keeps
# it however old it is, where time-based retention would one day delete the current champion.
_COMPACTED = {Topic.MODELS_PROMOTED, Topic.EXPERIMENTS}


# Topics that carry users' data: kept only ``retention_ms`` (with every dead-letter topic), so an
# erased user's events, examples and impressions leave the bus within that time.
PERSONAL = frozenset({Topic.EVENTS_RAW, Topic.EXAMPLES, Topic.IMPRESSIONS})


def all_topics(
    partitions: int, deployment: str = DEFAULT_DEPLOYMENT, *, retention_ms: int | None = None
) -> list[TopicSpec]:
    """Every topic of ``deployment`` and its dead-letter topic, with ``partitions`` for the keyed data topics.

    ``retention_ms`` bounds the personal topics and every dead-letter topic (None: the bus's default).
    """
    specs: list[TopicSpec] = []
    for topic in Topic:
        n = 1 if topic in _SINGLE_PARTITION else partitions
        configs = {"cleanup.policy": "compact"} if topic in _COMPACTED else {}
        name = topic_name(topic, deployment)
        specs.append(TopicSpec(name, n, retention_ms=retention_ms if topic in PERSONAL else None, configs=configs))
        specs.append(TopicSpec(dlq(name), 1, retention_ms=retention_ms))
    return specs
