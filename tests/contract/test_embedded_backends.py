"""Behaviour only the embedded backends have (or that only they can be made to show quickly).

The shared contract lives in the ``test_*_contract.py`` suites; what is here is
specific to one engine: LRU eviction, the SQLite bus's leases and auto-created
topics, cross-process atomicity of the SQLite store, onnxruntime failure modes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from contract_backends import FEATURES, drain, write_tiny_model
from scalerec_adapters.bus import OutgoingMessage
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus, assign_round_robin
from scalerec_adapters.embedded.sqlite_store import SqliteStore, UnknownTableError, prefix_successor
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.store import TableSpec, decode_counter
from scalerec_events.topics import TopicSpec

# -- memory cache ------------------------------------------------------------------------------------


def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_items=3)
    cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert cache.get("a") == b"1"  # a is now the most recently used
    cache.set("d", b"4")
    assert cache.get("b") is None, "the least recently used key goes first"
    assert cache.get_many(["a", "c", "d"]) == {"a": b"1", "c": b"3", "d": b"4"}
    assert len(cache) == 3


# -- sqlite bus --------------------------------------------------------------------------------------


def test_round_robin_assignment_is_deterministic_and_disjoint() -> None:
    members = {"m2": ["t1", "t2"], "m1": ["t1"], "m3": ["t2"]}
    counts = {"t1": 3, "t2": 4}
    first = assign_round_robin(members, counts)
    assert first == assign_round_robin(dict(reversed(list(members.items()))), counts)
    owned = [tp for tps in first.values() for tp in tps]
    assert sorted(owned) == [("t1", p) for p in range(3)] + [("t2", p) for p in range(4)]
    assert all(t == "t2" for t, _ in first["m3"]) and all(t == "t1" for t, _ in first["m1"])
    assert all(first.values()), first


async def test_producing_to_a_missing_topic_creates_it(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db", default_partitions=3)
    await bus.start()
    try:
        assert await bus.end_offsets("auto") == {}
        partition, offset = await bus.producer().send("auto", b"x", key=b"k")
        assert offset == 0 and 0 <= partition < 3
        ends = await bus.end_offsets("auto")
        assert len(ends) == 3 and ends[partition] == 1
        # ensure_topics leaves an existing topic as it is.
        await bus.ensure_topics([TopicSpec("auto", 8)])
        assert len(await bus.end_offsets("auto")) == 3
    finally:
        await bus.close()


async def test_concurrent_batches_share_one_commit_and_keep_their_order(tmp_path: Path) -> None:
    """The collector's requests each send a batch: under load they are group-committed (fewer fsyncs),
    every batch still lands whole and in order, and a batch that cannot be appended fails alone."""
    bus = SqliteEventBus(tmp_path / "bus.db", default_partitions=1)
    await bus.start()
    appends: list[int] = []
    real_append = bus._append

    def counting_append(batch):  # type: ignore[no-untyped-def]
        appends.append(len(batch))
        return real_append(batch)

    bus._append = counting_append  # type: ignore[method-assign]
    try:
        producer = bus.producer()
        batches = [[OutgoingMessage(b"%d-%d" % (b, i), b"k") for i in range(10)] for b in range(20)]
        await asyncio.gather(*(producer.send_batch("t", b) for b in batches[:10]))
        assert len(appends) < 10, f"every batch had its own commit: {appends}"
        # A value that is not bytes makes the append raise: only its sender sees the error.
        bad = [OutgoingMessage("not bytes", b"k")]  # type: ignore[arg-type]
        results = await asyncio.gather(
            *(producer.send_batch("t", b) for b in batches[10:15]),
            producer.send_batch("t", bad),
            *(producer.send_batch("t", b) for b in batches[15:]),
            return_exceptions=True,
        )
        assert isinstance(results[5], TypeError) and all(r is None for i, r in enumerate(results) if i != 5)
        consumer = await bus.consumer(["t"], "g")
        got = [m.value for m in await drain(consumer, 200)]
        assert sorted(got) == sorted(m.value for b in batches for m in b)
        for b in batches:  # each batch contiguous and in its own order
            first = got.index(b[0].value)
            assert got[first : first + 10] == [m.value for m in b]
    finally:
        await bus.close()


async def test_consumer_subscribed_before_the_topic_exists_gets_its_messages(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    await bus.start()
    try:
        consumer = await bus.consumer(["later"], "g")
        assert await consumer.getmany(timeout_ms=100) == []
        await bus.producer().send_batch("later", [OutgoingMessage(b"m%d" % i, key=b"k%d" % i) for i in range(8)])
        assert len(await drain(consumer, 8)) == 8
        await consumer.commit()
        assert await bus.committed_offsets("g", "later") == await bus.end_offsets("later")
    finally:
        await bus.close()


async def test_an_idle_consumer_polls_less_often_and_a_message_brings_it_back(tmp_path: Path) -> None:
    """An idle topic costs a serving process a few polls a second, not forty; traffic resets the pace."""
    bus = SqliteEventBus(tmp_path / "bus.db", poll_interval_ms=25, idle_poll_interval_ms=200)
    await bus.start()
    try:
        consumer = await bus.consumer(["quiet"], "g")
        polls = 0
        poll_once = consumer._poll_once  # type: ignore[attr-defined]

        def counting(max_records: int) -> list:  # type: ignore[type-arg]
            nonlocal polls
            polls += 1
            return poll_once(max_records)

        consumer._poll_once = counting  # type: ignore[attr-defined,method-assign]
        assert await consumer.getmany(timeout_ms=1000) == []
        assert polls <= 10, f"{polls} polls in an idle second (25 ms steady polling would be ~40)"
        await bus.producer().send_batch("quiet", [OutgoingMessage(b"m", key=b"k")])
        assert len(await drain(consumer, 1)) == 1
        assert consumer._idle_sleep == bus.poll_interval_s  # type: ignore[attr-defined]
    finally:
        await bus.close()


async def test_retention_drops_old_messages_but_never_reuses_offsets(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.db")
    bus.RETENTION_CHECK_S = 0  # check on every append instead of once a minute
    await bus.start()
    try:
        await bus.ensure_topics([TopicSpec("short", 1, retention_ms=50), TopicSpec("forever", 1)])
        await bus.producer().send_batch("short", [OutgoingMessage(b"old%d" % i) for i in range(5)])
        await bus.producer().send_batch("forever", [OutgoingMessage(b"kept")])
        await asyncio.sleep(0.1)
        assert await bus.producer().send("short", b"new") == (0, 5)
        await bus.producer().send("forever", b"kept too")
        fresh = await bus.consumer(["short", "forever"], "late-joiner")
        got = await drain(fresh, 3)
        assert sorted(m.value for m in got) == [b"kept", b"kept too", b"new"]
        assert await bus.end_offsets("short") == {0: 6}
    finally:
        await bus.close()


_MEMBER = textwrap.dedent(
    """
    import asyncio, sys, time
    from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus

    async def main(path, topic):
        bus = SqliteEventBus(path, session_timeout_ms=600)
        await bus.start()
        consumer = await bus.consumer([topic], "workers")
        got = await consumer.getmany(timeout_ms=3000)
        print("GOT", len(got), flush=True)  # read but never committed
        time.sleep(60)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_killed_member_loses_its_partitions_after_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    bus = SqliteEventBus(path, session_timeout_ms=600)
    await bus.start()
    await bus.ensure_topics([TopicSpec("jobs", 4)])
    await bus.producer().send_batch("jobs", [OutgoingMessage(b"j%d" % i, key=b"k%d" % i) for i in range(40)])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MEMBER, str(path), "jobs", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        survivor = await bus.consumer(["jobs"], "workers")
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert line.startswith(b"GOT ")
        before = await survivor.getmany(timeout_ms=200, max_records=1000)
        assert len(before) < 40, "both members should have shared the partitions while the child lived"
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
        started = time.monotonic()
        after = await drain(survivor, 40 - len(before), timeout_s=10)
        assert sorted(m.value for m in before + after) == sorted(b"j%d" % i for i in range(40))
        assert time.monotonic() - started < 5, "partitions should move once the lease (0.6 s) expired"
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await bus.close()


# -- sqlite store ------------------------------------------------------------------------------------


def test_prefix_successor() -> None:
    assert prefix_successor(b"ab") == b"ac"
    assert prefix_successor(b"a\xff") == b"b"
    assert prefix_successor(b"\x00") == b"\x01"
    assert prefix_successor(b"\xff\xff") is None


def test_unknown_table_error_names_the_table(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    with pytest.raises(UnknownTableError, match=r"'ghost'.*ensure_tables"):
        list(store.scan("ghost"))
    store.close()


def test_tables_are_namespaced_and_shared_between_instances(tmp_path: Path) -> None:
    a, b = SqliteStore(tmp_path / "s.db", namespace="prod"), SqliteStore(tmp_path / "s.db", namespace="prod")
    other = SqliteStore(tmp_path / "s.db", namespace="staging")
    a.ensure_tables([TableSpec("items", ("f",))])
    a.put("items", b"i1", {b"f:x": b"1"})
    assert b.get("items", b"i1") == {b"f:x": b"1"}, "a table created by one process is visible to the others"
    with pytest.raises(UnknownTableError):
        other.get("items", b"i1")
    for s in (a, b, other):
        s.close()


def test_expired_cells_are_purged_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.ensure_tables([TableSpec("t", ("s",), ttl_seconds={"s": 1})])
    store.put_many("t", [(b"r%d" % i, {b"s:x": b"1"}) for i in range(10)])
    time.sleep(1.1)
    store._last_purge.clear()  # skip the once-a-minute throttle
    store.put("t", b"new", {b"s:x": b"1"})
    with sqlite3.connect(path) as raw:
        (count,) = raw.execute('SELECT COUNT(*) FROM "t:scalerec:t"').fetchone()
    assert count == 1
    store.close()


def test_increment_refuses_a_cell_that_is_not_a_counter(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.ensure_tables([TableSpec("stats", ("c",))])
    store.put("stats", b"item", {b"c:name": b"hello"})
    with pytest.raises(ValueError, match="not an 8-byte counter"):
        store.increment("stats", b"item", b"c:name")
    assert store.get("stats", b"item") == {b"c:name": b"hello"}
    store.close()


_INCREMENTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from scalerec_adapters.embedded.sqlite_store import SqliteStore

    store = SqliteStore(Path(sys.argv[1]))
    for _ in range(int(sys.argv[2])):
        store.increment("stats", b"item", b"c:n")
    store.close()
    """
)


def test_increment_is_atomic_across_processes(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.ensure_tables([TableSpec("stats", ("c",))])
    children = [subprocess.Popen([sys.executable, "-c", _INCREMENTER, str(path), "150"]) for _ in range(2)]
    for _ in range(150):
        store.increment("stats", b"item", b"c:n")
    assert [c.wait(timeout=60) for c in children] == [0, 0]
    assert decode_counter(store.get("stats", b"item")[b"c:n"]) == 450
    store.close()


def test_writers_queue_on_the_lock_file_and_a_failed_transaction_lets_go(tmp_path: Path) -> None:
    """A writer holds the writers' lock file for its whole transaction; the next one starts when it ends
    (not a busy-handler sleep later), and a transaction that raises releases it too."""
    import fcntl
    import threading

    from scalerec_adapters.embedded._sqlite import connect, write_txn

    path = tmp_path / "w.db"
    first, second = connect(path), connect(path)
    first.execute("CREATE TABLE t (v INTEGER)")
    events: list[tuple[str, float]] = []

    def hold() -> None:
        with write_txn(first):
            first.execute("INSERT INTO t VALUES (1)")
            events.append(("first holds", time.monotonic()))
            time.sleep(0.2)
            events.append(("first commits", time.monotonic()))

    holder = threading.Thread(target=hold)
    holder.start()
    while not events:
        time.sleep(0.001)
    with write_txn(second):  # waits on the lock file, then finds SQLite's lock free
        events.append(("second begins", time.monotonic()))
        second.execute("INSERT INTO t VALUES (2)")
    holder.join()
    assert [e for e, _ in events] == ["first holds", "first commits", "second begins"]
    assert first.execute("SELECT v FROM t ORDER BY v").fetchall() == [(1,), (2,)]

    with pytest.raises(RuntimeError), write_txn(first):
        first.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("boom")
    probe = os.open(f"{path}-writers.lock", os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: raises BlockingIOError otherwise
    finally:
        os.close(probe)
    assert first.execute("SELECT count(*) FROM t").fetchone() == (2,)  # the failed one rolled back
    first.close()
    second.close()


# -- onnxruntime scorer ------------------------------------------------------------------------------


async def test_broken_model_file_raises_scorer_unavailable(tmp_path: Path) -> None:
    (tmp_path / "m" / "3").mkdir(parents=True)
    (tmp_path / "m" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    scorer = OnnxRuntimeScorer(tmp_path)
    with pytest.raises(ScorerUnavailable, match=r"'m' version 3"):
        await scorer.infer("m", 3, {"ids": np.zeros((1, FEATURES), dtype=np.int64)}, ["scores"])
    await scorer.close()


async def test_bad_input_and_unknown_output_raise_scorer_unavailable(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "m" / "1", scale=2.0, external_data=False)
    scorer = OnnxRuntimeScorer(tmp_path, intra_op_threads=2)
    await scorer.load("m", 1)
    assert scorer.loaded() == [("m", 1)]
    with pytest.raises(ScorerUnavailable, match="no output"):
        await scorer.infer("m", 1, {"ids": np.zeros((1, FEATURES), dtype=np.int64)}, ["nope"])
    with pytest.raises(ScorerUnavailable, match="inference failed"):
        await scorer.infer("m", 1, {"ids": np.zeros((1, FEATURES), dtype=np.float32)}, ["scores"])
    await scorer.close()


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_concurrent_requests_of_one_shape_run_in_fewer_executions(tmp_path: Path, inline: bool) -> None:
    """The in-process micro-batcher: N concurrent batch-1 requests, fewer than N runs, each caller its own rows."""
    write_tiny_model(tmp_path / "m" / "1", scale=2.0, external_data=False)
    scorer = OnnxRuntimeScorer(tmp_path, inline=inline, max_batch_rows=16)
    await scorer.load("m", 1)
    rng = np.random.default_rng(0)
    requests = [{"ids": rng.integers(0, 10, (1, FEATURES)).astype(np.int64)} for _ in range(64)]
    runs_before = scorer.runs
    results = await asyncio.gather(*(scorer.infer("m", 1, r, ["scores"]) for r in requests))
    runs = scorer.runs - runs_before
    assert runs < len(requests), f"{runs} runs for {len(requests)} concurrent requests"
    for req, res in zip(requests, results, strict=True):
        np.testing.assert_allclose(res["scores"], req["ids"] * 2.0 + 1)
    await scorer.close()


async def test_an_inline_batch_outlives_a_cancelled_request(tmp_path: Path) -> None:
    """Requests batched together: when the first of them is cancelled (its time budget ran out) the
    others still get their own rows, and a request cancelled alone leaves the scorer able to run."""
    write_tiny_model(tmp_path / "m" / "1", scale=2.0, external_data=False)
    scorer = OnnxRuntimeScorer(tmp_path, inline=True, max_batch_rows=16)
    await scorer.load("m", 1)
    rng = np.random.default_rng(1)
    requests = [{"ids": rng.integers(0, 10, (1, FEATURES)).astype(np.int64)} for _ in range(5)]
    leader = asyncio.create_task(scorer.infer("m", 1, requests[0], ["scores"]))
    others = [asyncio.create_task(scorer.infer("m", 1, r, ["scores"])) for r in requests[1:]]
    await asyncio.sleep(0)  # every request queued; the leader waits for its turn of the loop
    leader.cancel()
    results = await asyncio.gather(*others)
    assert leader.cancelled()
    for req, res in zip(requests[1:], results, strict=True):
        np.testing.assert_allclose(res["scores"], req["ids"] * 2.0 + 1)
    # A leader cancelled alone leaves nothing behind: the next request runs.
    alone = asyncio.create_task(scorer.infer("m", 1, requests[0], ["scores"]))
    await asyncio.sleep(0)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    res = await asyncio.wait_for(scorer.infer("m", 1, requests[1], ["scores"]), timeout=5)
    np.testing.assert_allclose(res["scores"], requests[1]["ids"] * 2.0 + 1)
    await scorer.close()
