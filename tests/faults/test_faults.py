"""Faults on the real stack: every accepted event is stored exactly once, and the ranker never stops answering.

All five services run as processes on Kafka, HBase (through Thrift) and Memcached; each test breaks
one server (or kills one service) while its own users' events flow through the collector, then
checks HBase row by row against the event ids the collector acknowledged with a 202.  See
``conftest.py`` for how the servers and the data are kept apart from everyone else's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from scalerec_cli import driver
from scalerec_storage import schema as s

from tests.faults.conftest import (
    FaultCluster,
    Poster,
    RankerProbe,
    assert_stored_exactly_once,
    batches,
    events_for,
    stored_event_ids,
    unique_tag,
    users_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.1)


def test_kafka_broker_restart_during_ingestion(pipeline: FaultCluster) -> None:
    tag = unique_tag("kafka")
    events = events_for(tag, users=40, events_per_user=25, seed=21)
    # About 50 small batches at a steady pace: the sending spans the whole outage.
    sent = batches(events, 20)
    poster = Poster(f"{pipeline.url('collector')}/v1/events", sent, pause_s=0.3)
    with RankerProbe(pipeline.url("ranker"), [pipeline.seed_user]) as probe:
        poster.start()
        wait_for(lambda: poster.done_batches >= 3, 30, "the first batches to be accepted")
        try:
            pipeline.stack.down("kafka")
            assert poster.done_batches < len(sent), "all was sent before the broker went down"
            time.sleep(8)  # the broker stays away longer than the collector's 5 s send timeout
        finally:
            pipeline.stack.up("kafka")
        poster.join()
        store = pipeline.store()
        try:
            assert_stored_exactly_once(
                store, users_of(events), poster.accepted, timeout=120, explain=pipeline.where_missing
            )
        finally:
            store.close()

    # The client saw the outage as 503s, retried, and in the end every event was accepted and stored.
    assert poster.unavailable > 0, "the collector never answered 503 while the broker was down"
    assert poster.accepted == {e.event_id for e in events}
    probe.assert_always_answered()


def test_preprocessor_killed_in_the_middle_of_a_batch(pipeline: FaultCluster) -> None:
    tag = unique_tag("kill")
    events = events_for(tag, users=100, events_per_user=50, seed=22)
    users = users_of(events)
    preprocessor = pipeline.url("preprocessor")
    store = pipeline.store()
    with RankerProbe(pipeline.url("ranker"), [pipeline.seed_user]) as probe:
        try:
            # A backlog of about ten poll batches (POLL_MAX_RECORDS is 500 here) waits in Kafka ...
            pipeline.cluster.stop("preprocessor")
            poster = Poster(f"{pipeline.url('collector')}/v1/events", batches(events, 1000)).start()
            poster.join()
            assert len(poster.accepted) > 4000
            # ... the preprocessor starts on it and is killed -9 as soon as its first batch is done,
            # i.e. while it is writing the next one.  "Done" is read from HBase itself: the dedupe index
            # is written last in a batch, so a sample of the ids showing up there marks the first one.
            owner = {e.event_id: e.user_id for e in events}
            picked = random.Random(0).sample(sorted(poster.accepted), 200)
            sample = [s.event_index_key(owner[i], i) for i in picked]

            def first_batch_done() -> bool:
                try:
                    return bool(store.get_many(s.EVENT_INDEX, sample, columns=[b"m"]))
                except Exception:  # the first call may race the table's first region opening
                    return False

            pipeline.cluster.start("preprocessor")
            wait_for(first_batch_done, 120, "the preprocessor to store its first batch")
            pipeline.cluster.stop("preprocessor", kill=True)
            at_kill = len(stored_event_ids(store, users))
            assert 0 < at_kill < len(poster.accepted), f"{at_kill} of {len(poster.accepted)} stored: not mid-backlog"
        finally:
            pipeline.cluster.start("preprocessor")
            pipeline.cluster.wait_ready("preprocessor")
        # The uncommitted batch is read again and rewritten to the same cells: nothing lost, nothing twice.
        assert_stored_exactly_once(store, users, poster.accepted, timeout=120, explain=pipeline.where_missing)
        stats = driver.wait_preprocessed(preprocessor, 0, timeout=60)
        assert not any(w["failing"] or w["dead_lettered"] for w in stats["workers"].values()), stats
    store.close()
    probe.assert_always_answered()


def test_hbase_thrift_server_outage(pipeline: FaultCluster) -> None:
    tag = unique_tag("thrift")
    events = events_for(tag, users=40, events_per_user=25, seed=23)
    # A user never seen before has no cached history: the ranker must ask HBase for it.
    newcomer = f"{tag}-newcomer-"
    poster = Poster(f"{pipeline.url('collector')}/v1/events", batches(events, 50), pause_s=0.1)
    with RankerProbe(pipeline.url("ranker"), [pipeline.seed_user], fresh_prefix=newcomer) as probe:
        poster.start()
        wait_for(lambda: poster.done_batches >= 3, 30, "the first batches to be accepted")
        try:
            pipeline.stack.down("thrift")
            down_from = time.monotonic()
            time.sleep(15)
            down_until = time.monotonic()
        finally:
            pipeline.stack.up("thrift")
        poster.join()
        store = pipeline.store()
        try:
            assert_stored_exactly_once(
                store, users_of(events), poster.accepted, timeout=120, explain=pipeline.where_missing
            )
        finally:
            store.close()
        back = time.monotonic()
        time.sleep(2)

    assert poster.accepted == {e.event_id for e in events}
    probe.assert_always_answered()
    # Without HBase the ranker answers from its in-memory baseline and says why ...
    during = probe.between(down_from, down_until, newcomer)
    assert during, "no request was made during the outage"
    for a in during:
        assert a.body is not None and a.body["fallback"] is True
        # The reason says what failed: "history unavailable: store failed: StoreUnavailable", ...
        assert a.body["fallback_reason"].startswith("history unavailable: "), a.body
    # ... and once Thrift is back it reads histories again (a newcomer is then just unknown).
    after = probe.between(back, time.monotonic(), newcomer)
    assert after and all(a.body and "unknown user" in a.body["fallback_reason"] for a in after), after[-1:]


def test_memcached_down(pipeline: FaultCluster) -> None:
    tag = unique_tag("memc")
    events = events_for(tag, users=40, events_per_user=25, seed=24)
    users = users_of(events)
    poster = Poster(f"{pipeline.url('collector')}/v1/events", batches(events, 50), pause_s=0.05)
    store = pipeline.store()
    with RankerProbe(pipeline.url("ranker"), [pipeline.seed_user]) as probe:
        poster.start()
        wait_for(lambda: poster.done_batches >= 3, 30, "the first batches to be accepted")
        try:
            pipeline.stack.down("memcached")  # both nodes
            down_from = time.monotonic()
            # With no cache at all the preprocessor still stores everything ...
            poster.join()
            assert_stored_exactly_once(store, users, poster.accepted, timeout=120, explain=pipeline.where_missing)
            # ... and the ranker reads histories from HBase, for old users and for the ones just stored.
            fresh = driver.recommend(pipeline.url("ranker"), users[0], 10)
            down_until = time.monotonic()
        finally:
            pipeline.stack.up("memcached")
    store.close()

    assert poster.accepted == {e.event_id for e in events}
    probe.assert_always_answered()
    assert fresh["history_source"] == "store" and fresh["items"], fresh
    assert not (fresh["fallback_reason"] or "").startswith("history unavailable"), fresh
    during = probe.between(down_from + 1, down_until, pipeline.seed_user)
    assert during, "no request was made while Memcached was down"
    assert all(a.body and a.body["history_source"] == "store" for a in during)
    if pipeline.model_version is not None:  # the model keeps serving: a cache outage is not a degradation
        assert all(a.body and a.body["model_version"] == pipeline.model_version for a in during)
