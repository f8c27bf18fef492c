"""The consume → process → commit loop: transient failures are retried, poison goes to the DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from scalerec_adapters.bus import Consumer, Message
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.worker import BatchResult, ConsumerWorker
from scalerec_core.settings import ServiceSettings
from scalerec_core.telemetry import render_metrics, setup_telemetry
from scalerec_events.topics import TopicSpec, dlq


async def _wait(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_transient_failures_are_retried_until_the_batch_succeeds(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 2)])
    for i in range(10):
        await bus.producer().send("t", f"m{i}".encode(), key=f"k{i}".encode())
    seen: list[bytes] = []
    failures = {"left": 2}

    async def handler(messages: Sequence[Message]) -> BatchResult:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("store down")
        seen.extend(m.value for m in messages)
        return BatchResult()

    worker = ConsumerWorker(bus, ["t"], "g", handler, poll_timeout_ms=50)
    worker.start()
    await _wait(lambda: len(set(seen)) == 10)
    await worker.stop()
    assert sorted(set(seen)) == sorted(f"m{i}".encode() for i in range(10))
    # Everything is committed: a new member of the group has nothing left to read.
    consumer = await bus.consumer(["t"], "g")
    assert await consumer.getmany(timeout_ms=100) == []
    await consumer.stop()
    await bus.close()


async def test_poison_messages_land_in_the_dead_letter_topic_with_the_reason(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 1), TopicSpec(dlq("t"), 1)])
    await bus.producer().send("t", b"good")
    await bus.producer().send("t", b"bad")

    async def handler(messages: Sequence[Message]) -> BatchResult:
        return BatchResult(poison=[(m, "cannot parse") for m in messages if m.value == b"bad"])

    worker = ConsumerWorker(bus, ["t"], "g", handler, poll_timeout_ms=50)
    worker.start()
    await _wait(lambda: worker.dead_lettered == 1)
    await worker.stop()
    consumer = await bus.consumer([dlq("t")], "inspect")
    dead = await consumer.getmany(timeout_ms=500)
    assert [m.value for m in dead] == [b"bad"]
    assert dead[0].header("x-dlq-reason") == b"cannot parse"
    assert dead[0].header("x-dlq-source") == b"t/0/1"
    await consumer.stop()
    await bus.close()


def test_parse_batch_separates_poison_with_the_reason() -> None:
    from scalerec_adapters.worker import parse_batch
    from scalerec_events.models import ErasureRequest

    good = ErasureRequest(request_id="r1", user_id="u1", requested_at="2026-01-01T00:00:00Z")
    messages = [Message("t", 0, 0, None, good.model_dump_json().encode()), Message("t", 0, 1, None, b"{oops")]
    parsed, result = parse_batch(messages, ErasureRequest, "erasure request")
    assert [r.user_id for _, r in parsed] == ["u1"]
    assert len(result.poison) == 1 and result.poison[0][1].startswith("invalid erasure request")


async def test_a_message_failing_after_parsing_goes_to_the_dlq_after_max_retries_and_the_partition_moves_on(
    tmp_path: Path,
) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 1), TopicSpec(dlq("t"), 1)])
    for i in range(3):
        await bus.producer().send("t", f"m{i}".encode())
    await bus.producer().send("t", b"bad")
    for i in range(3, 6):
        await bus.producer().send("t", f"m{i}".encode())
    attempts: dict[bytes, int] = {}
    joins = {"n": 0}
    real_consumer = bus.consumer

    async def counting_consumer(topics, group_id):  # type: ignore[no-untyped-def]
        joins["n"] += 1
        return await real_consumer(topics, group_id)

    bus.consumer = counting_consumer  # type: ignore[method-assign]

    async def handler(messages: Sequence[Message]) -> BatchResult:
        for m in messages:
            attempts[m.value] = attempts.get(m.value, 0) + 1
            if m.value == b"bad":
                raise KeyError("price bucket for 'bad'")
        return BatchResult()

    worker = ConsumerWorker(bus, ["t"], "g", handler, poll_timeout_ms=50, max_retries=3, max_backoff_s=0.01)
    worker.start()
    await _wait(lambda: worker.dead_lettered == 1 and attempts.get(b"m5", 0) >= 1)
    await worker.stop()
    assert attempts[b"bad"] == 3  # exactly MAX_RETRIES attempts
    # Messages before the poison in its batch ran once in the batch and once alone; later ones exactly once.
    assert all(attempts[f"m{i}".encode()] <= 2 for i in range(3))
    assert all(attempts[f"m{i}".encode()] == 1 for i in range(3, 6))
    assert joins["n"] == 1  # retries never left and rejoined the group
    consumer = await bus.consumer([dlq("t")], "inspect")
    dead = await consumer.getmany(timeout_ms=500)
    assert [m.value for m in dead] == [b"bad"]
    reason = (dead[0].header("x-dlq-reason") or b"").decode()
    assert "3 attempts" in reason and "KeyError" in reason and "price bucket" in reason
    assert dead[0].header("x-dlq-source") == b"t/0/3"
    await consumer.stop()
    # Everything is committed: the partition moved past the poison.
    consumer = await bus.consumer(["t"], "g")
    assert await consumer.getmany(timeout_ms=100) == []
    await consumer.stop()
    await bus.close()


async def test_a_backend_outage_is_never_dead_lettered_however_long_it_lasts(tmp_path: Path) -> None:
    from scalerec_adapters.store import StoreUnavailable

    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 1), TopicSpec(dlq("t"), 1)])
    await bus.producer().send("t", b"m")
    failures = {"left": 8}
    seen: list[bytes] = []

    async def handler(messages: Sequence[Message]) -> BatchResult:
        if failures["left"]:
            failures["left"] -= 1
            raise StoreUnavailable("HBase down")
        seen.extend(m.value for m in messages)
        return BatchResult()

    worker = ConsumerWorker(bus, ["t"], "g", handler, poll_timeout_ms=50, max_retries=2, max_backoff_s=0.01)
    worker.start()
    await _wait(lambda: seen == [b"m"])
    await worker.stop()
    assert worker.dead_lettered == 0
    await bus.close()


def _first_member_as(bus: SqliteEventBus, wrap: Callable[[Consumer], Consumer]) -> dict[str, int]:
    """Make the bus's first consumer ``wrap(real one)`` and later ones real; the count of joins so far."""
    joins = {"n": 0}
    real_consumer = bus.consumer

    async def consumer(topics: Sequence[str], group_id: str) -> Consumer:
        joins["n"] += 1
        inner = await real_consumer(topics, group_id)
        return wrap(inner) if joins["n"] == 1 else inner

    bus.consumer = consumer  # type: ignore[method-assign]
    return joins


class _Deaf(Consumer):
    """A real member of the group whose polls come back empty: a client wedged after a broker restart."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 500) -> list[Message]:
        await asyncio.sleep(timeout_ms / 1000)
        return []

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        await self.inner.commit(offsets)

    async def lag_by_partition(self) -> dict[tuple[str, int], int]:
        return await self.inner.lag_by_partition()

    async def stop(self) -> None:
        await self.inner.stop()


async def test_a_member_that_polls_nothing_while_messages_wait_rejoins_and_reads_them(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 2)])
    for i in range(10):
        await bus.producer().send("t", f"m{i}".encode(), key=f"k{i}".encode())
    joins = _first_member_as(bus, _Deaf)
    seen: list[bytes] = []

    async def handler(messages: Sequence[Message]) -> BatchResult:
        seen.extend(m.value for m in messages)
        return BatchResult()

    setup_telemetry(ServiceSettings())  # the default exporter: Prometheus, as /metrics serves it
    worker = ConsumerWorker(bus, ["t"], "g-rejoin", handler, poll_timeout_ms=50, stall_after_s=0.5)
    worker.start()
    await _wait(lambda: len(set(seen)) == 10)
    assert worker.stall_resets == 1 and joins["n"] == 2
    rejoins = [
        line
        for line in (await render_metrics()).decode().splitlines()
        if line.startswith("scalerec_bus_consumer_rejoins_total{") and 'group="g-rejoin"' in line
    ]
    assert len(rejoins) == 1 and rejoins[0].endswith(" 1.0"), rejoins
    # Caught up, the idle member's lag checks find nothing waiting: it stays in the group.
    await asyncio.sleep(1.2)
    assert worker.stall_resets == 1 and joins["n"] == 2
    await worker.stop()
    await bus.close()


class _CommitAnswerLost(Consumer):
    """A member whose commit reaches the group but whose client hears an error back, as aiokafka's
    CommitFailedError when a rebalance lands in the middle of it."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 500) -> list[Message]:
        return await self.inner.getmany(timeout_ms, max_records)

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        await self.inner.commit(offsets)
        raise ConnectionError("the group rebalanced during the commit")

    async def lag_by_partition(self) -> dict[tuple[str, int], int]:
        return await self.inner.lag_by_partition()

    async def stop(self) -> None:
        await self.inner.stop()


async def test_a_member_with_nothing_left_after_a_bus_failure_is_not_reported_failing(tmp_path: Path) -> None:
    """After the rejoin the batch is already committed: empty polls, the bus healthy, ``failing`` cleared.

    Seen in the erasure test on Kafka: the erasure worker of a preprocessor whose commit met a rebalance
    showed ``failing: true`` in /v1/stats for as long as no further erasure request came.
    """
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    await bus.ensure_topics([TopicSpec("t", 1)])
    for i in range(3):
        await bus.producer().send("t", f"m{i}".encode())
    joins = _first_member_as(bus, _CommitAnswerLost)
    seen: list[bytes] = []

    async def handler(messages: Sequence[Message]) -> BatchResult:
        seen.extend(m.value for m in messages)
        return BatchResult()

    worker = ConsumerWorker(bus, ["t"], "g-lost-commit", handler, poll_timeout_ms=50)
    worker.start()
    await _wait(lambda: joins["n"] == 2)
    await _wait(lambda: not worker.failing)
    assert seen == [b"m0", b"m1", b"m2"]  # the commit had landed: nothing read twice
    await worker.stop()
    await bus.close()
