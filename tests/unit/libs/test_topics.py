"""Topic names follow DEPLOYMENT: two deployments on one Kafka never read each other's events."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from scalerec_core.settings import ServiceSettings
from scalerec_events.topics import Topic, all_topics, dlq, topic_name

# The names the default deployment has always used (DESIGN.md §3): they must not move.
DEFAULT_NAMES = {
    Topic.EVENTS_RAW: "scalerec.events.raw.v1",
    Topic.ITEMS: "scalerec.items.upsert.v1",
    Topic.ERASURE: "scalerec.users.erasure.v1",
    Topic.EXAMPLES: "scalerec.training.examples.v1",
    Topic.IMPRESSIONS: "scalerec.events.impressions.v1",
    Topic.MODELS_CANDIDATE: "scalerec.models.candidate.v1",
    Topic.MODELS_PROMOTED: "scalerec.models.promoted.v1",
    Topic.EXPERIMENTS: "scalerec.experiments.state.v1",
}


def test_the_default_deployment_keeps_its_topic_names() -> None:
    settings = ServiceSettings()
    assert {t: settings.topic(t) for t in Topic} == DEFAULT_NAMES
    assert {s.name for s in settings.topics()} == set(DEFAULT_NAMES.values()) | {dlq(n) for n in DEFAULT_NAMES.values()}


def test_every_topic_and_group_of_a_deployment_carries_its_name() -> None:
    prod, staging = ServiceSettings(deployment="prod"), ServiceSettings(deployment="staging")
    assert prod.topic(Topic.EVENTS_RAW) == "prod.events.raw.v1"
    assert prod.group("preprocessor.events") == "prod.preprocessor.events"
    prod_names = {s.name for s in prod.topics()}
    assert all(n.startswith("prod.") for n in prod_names)
    assert not prod_names & {s.name for s in staging.topics()}
    assert not prod_names & {s.name for s in ServiceSettings().topics()}


def test_a_topic_is_not_a_name_by_itself() -> None:
    # A Topic used where a name is expected would silently be the default deployment's topic.
    assert not isinstance(Topic.EVENTS_RAW, str)
    assert topic_name(Topic.EVENTS_RAW) == "scalerec.events.raw.v1"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "prod/x", "ü", "-prod", "x" * 65])
def test_a_deployment_name_kafka_hbase_or_memcached_would_refuse_stops_the_service(bad: str) -> None:
    with pytest.raises(ValidationError, match="deployment"):
        ServiceSettings(deployment=bad)
    with pytest.raises(ValueError):
        topic_name(Topic.ITEMS, bad)


def test_promotions_are_compacted_and_single_partition() -> None:
    specs = {s.name: s for s in all_topics(12, "prod")}
    promoted = specs["prod.models.promoted.v1"]
    assert promoted.partitions == 1 and promoted.configs == {"cleanup.policy": "compact"}
    assert specs["prod.events.raw.v1"].partitions == 12
    assert "cleanup.policy" not in specs["prod.events.raw.v1"].configs
    # Dead letters keep their reason header and are read by people, not replayed by key: not compacted.
    assert specs[dlq("prod.models.promoted.v1")].configs == {}
