"""KafkaEventBus against a real broker: broker restarts and outages, which the contract suite cannot stage."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from scalerec_adapters.bus import OutgoingMessage
from scalerec_adapters.factory import make_bus
from scalerec_adapters.kafka_bus import BusUnavailable, KafkaEventBus
from scalerec_events.topics import TopicSpec

from .conftest import HOST, PrivateStack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _name(kind: str) -> str:
    return f"it.{kind}.{uuid.uuid4().hex[:10]}"


async def _drain(bus: KafkaEventBus, topic: str, n: int, timeout_s: float = 20) -> list[bytes]:
    consumer = await bus.consumer([topic], _name("group"))
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += [m.value for m in await consumer.getmany(timeout_ms=300)]
    await consumer.stop()
    return got


async def test_producer_rides_out_a_broker_restart(private_kafka: PrivateStack) -> None:
    servers = f"{HOST}:{private_kafka.env['SCALEREC_KAFKA_PORT']}"
    bus = KafkaEventBus(servers, default_partitions=2, client_id="it", send_timeout_s=90)
    await bus.start()
    try:
        topic = _name("restart")
        await bus.ensure_topics([TopicSpec(topic, 2)])
        await bus.producer().send(topic, b"before", key=b"u1")

        await asyncio.to_thread(private_kafka.down, "kafka")
        # Sent while the broker is down: must wait and retry, not fail.
        pending = asyncio.create_task(bus.producer().send(topic, b"during", key=b"u1"))
        batch = asyncio.create_task(
            bus.producer().send_batch(topic, [OutgoingMessage(b"batch%d" % i, key=b"u%d" % i) for i in range(5)])
        )
        await asyncio.sleep(2)
        assert not pending.done(), "send returned while no broker was there"
        await asyncio.to_thread(private_kafka.up, "kafka")
        _, offset = await asyncio.wait_for(pending, timeout=90)
        await asyncio.wait_for(batch, timeout=90)
        assert offset >= 1

        got = await _drain(bus, topic, 7)
        assert sorted(got) == sorted([b"before", b"during", *(b"batch%d" % i for i in range(5))])
    finally:
        await bus.close()


@pytest.mark.parametrize("path", ["send", "send_batch"])
async def test_a_producer_whose_sequence_the_broker_refuses_is_replaced(shared_kafka: str, path: str) -> None:
    """A batch the producer had numbered never reached the broker (in flight when the broker stopped, the
    send given up at its deadline): the broker answers OutOfOrderSequenceNumber to every later one, and
    aiokafka's producer never recovers (seen in the fault tests: a collector answering 503 for minutes).
    The gap is opened here in the producer's own bookkeeping, the broker refuses for real, and the bus
    must replace the producer and deliver."""
    from aiokafka.structs import TopicPartition

    bus = KafkaEventBus(shared_kafka, default_partitions=1, client_id="it", send_timeout_s=20)
    await bus.start()
    try:
        topic = _name("sequence")
        await bus.ensure_topics([TopicSpec(topic, 1)])
        await bus.producer().send(topic, b"first", key=b"u1")
        broken = bus._producer
        assert broken is not None
        broken._txn_manager.increment_sequence_number(TopicPartition(topic, 0), 3)  # three "lost" messages
        if path == "send":
            await bus.producer().send(topic, b"after", key=b"u1")
        else:
            await bus.producer().send_batch(topic, [OutgoingMessage(b"after", key=b"u1")])
        assert bus._producer is not None and bus._producer is not broken, "the refused producer was kept"
        await bus.producer().send(topic, b"then", key=b"u1")
        assert await _drain(bus, topic, 3) == [b"first", b"after", b"then"]
    finally:
        await bus.close()


async def test_send_gives_up_at_its_deadline_with_a_clear_error() -> None:
    servers = f"{HOST}:{free_port()}"  # nothing listens there
    bus = KafkaEventBus(servers, default_partitions=2, client_id="it", send_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match=servers):
        await bus.producer().send("it.nowhere", b"x", key=b"k")
    assert time.monotonic() - started < 10
    assert not await bus.healthy()
    await bus.close()


async def test_factory_url_parameters_reach_the_bus(shared_kafka: str) -> None:
    bus = make_bus(f"kafka://{shared_kafka}?send_timeout_s=5&replication_factor=1", partitions=3)
    assert isinstance(bus, KafkaEventBus)
    assert bus.send_timeout_s == 5 and bus.default_partitions == 3
    await bus.start()
    try:
        assert await bus.healthy()
        topic = _name("factory")
        await bus.ensure_topics([TopicSpec(topic, 3)])
        await bus.producer().send(topic, b"x", key=b"k")
        assert await _drain(bus, topic, 1) == [b"x"]
    finally:
        await bus.close()
    with pytest.raises(ValueError, match="unknown kafka:// URL parameter"):
        make_bus(f"kafka://{shared_kafka}?sendtimeout=5")


async def test_existing_topics_keep_their_partitions(shared_kafka: str) -> None:
    bus = KafkaEventBus(shared_kafka, default_partitions=2, client_id="it")
    await bus.start()
    try:
        topic = _name("keep")
        await bus.ensure_topics([TopicSpec(topic, 3)])
        await bus.ensure_topics([TopicSpec(topic, 6)])  # left as it is, not an error
        producer = await bus._live_producer()
        assert await producer.partitions_for(topic) == {0, 1, 2}
    finally:
        await bus.close()
