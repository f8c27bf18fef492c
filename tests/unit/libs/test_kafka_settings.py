"""kafka:// URL parameters that decide how topics are created: checked when the bus is built,
before any connection, so a bad value stops the service at start with the reason."""

from __future__ import annotations

import pytest
from scalerec_adapters.factory import make_bus
from scalerec_events.topics import all_topics


def test_topics_get_the_replication_and_min_insync_replicas_of_the_url() -> None:
    bus = make_bus("kafka://k:9092?replication_factor=3&min_insync_replicas=2", partitions=6)
    topics = {t.name: t for t in bus.new_topics(all_topics(6, "eu1"))}  # type: ignore[attr-defined]
    raw = topics["eu1.events.raw.v1"]
    assert (raw.num_partitions, raw.replication_factor) == (6, 3)
    assert raw.topic_configs == {"min.insync.replicas": "2"}
    assert topics["eu1.models.promoted.v1"].topic_configs == {"cleanup.policy": "compact", "min.insync.replicas": "2"}


def test_without_parameters_topics_take_one_replica_and_the_brokers_defaults() -> None:
    bus = make_bus("kafka://k:9092")
    (topic,) = bus.new_topics(all_topics(2)[:1])  # type: ignore[attr-defined]
    assert topic.replication_factor == 1 and topic.topic_configs == {}


@pytest.mark.parametrize(
    "query",
    ["replication_factor=2&min_insync_replicas=3", "replication_factor=0", "compression_type=brotli", "acks=1"],
)
def test_a_bad_parameter_is_refused_with_the_reason(query: str) -> None:
    with pytest.raises(ValueError, match="kafka://"):
        make_bus(f"kafka://k:9092?{query}")
