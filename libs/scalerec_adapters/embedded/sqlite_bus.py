"""Embedded event bus: a durable, partitioned log in one SQLite file shared by several processes.

Each service runs in its own OS process, so nothing is coordinated in memory:
topics, offsets, group membership and committed offsets all live in the
database, and every decision (which offset a message gets, which member owns a
partition) is taken from what the database says.

- Offsets are assigned inside the write transaction that appends the message,
  from a per-partition counter, so they are dense and monotonic across
  processes.  A send returns only after that transaction committed
  (``synchronous=FULL`` by default: the acknowledgement survives a killed
  process and an OS crash).
- Concurrent ``send`` calls of one bus are group-committed: whatever queued up
  while the previous transaction was being written goes into the next one, so
  many small sends cost one fsync, not one each.
- Consumer groups: each member holds a lease row (heartbeated in the
  background).  Every member computes the same assignment from the live
  members — sorted member ids, round robin over the sorted partitions of the
  topics each member subscribed to — so no coordinator is needed.  A member
  whose lease expired (killed process) simply drops out of that computation
  and its partitions move to the others, which resume from the group's
  committed offsets: uncommitted work is redelivered (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from scalerec_events.topics import TopicSpec

from scalerec_adapters.bus import Consumer, EventBus, Headers, Message, OutgoingMessage, Producer, partition_for
from scalerec_adapters.embedded._sqlite import connect, read_txn, write_txn

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# Where a message landed: (partition, offset).
Placement = tuple[int, int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    off INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers TEXT,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, off)
);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    joined_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _encode_headers(headers: Headers) -> str | None:
    # JSON with hex values: readable with the sqlite3 shell when debugging, and headers are small.
    return json.dumps([[k, bytes(v).hex()] for k, v in headers]) if headers else None


def _decode_headers(raw: str | None) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, bytes.fromhex(v)) for k, v in json.loads(raw)) if raw else ()


def assign_round_robin(
    members: Mapping[str, Sequence[str]], partitions: Mapping[str, int]
) -> dict[str, list[TopicPartition]]:
    """Kafka's round-robin assignor: every member computes the same answer from the same inputs.

    ``members`` maps member id → subscribed topics; ``partitions`` maps topic →
    partition count.  Partitions are walked in (topic, partition) order and
    dealt to the sorted members in turn, skipping members not subscribed to
    the partition's topic.
    """
    order = sorted(members)
    out: dict[str, list[TopicPartition]] = {m: [] for m in order}
    if not order:
        return out
    subscribed = {m: set(members[m]) for m in order}
    cursor = 0
    for topic in sorted(partitions):
        eligible = [m for m in order if topic in subscribed[m]]
        if not eligible:
            continue
        for p in range(partitions[topic]):
            # Advance the shared cursor to the next member subscribed to this topic.
            for _ in range(len(order)):
                member = order[cursor % len(order)]
                cursor += 1
                if topic in subscribed[member]:
                    out[member].append((topic, p))
                    break
    return out


class SqliteEventBus(EventBus):
    """Kafka-like topics, partitions and consumer groups on one SQLite file (see the module docstring)."""

    RETENTION_CHECK_S = 60.0

    def __init__(
        self,
        path: Path,
        default_partitions: int = 4,
        *,
        session_timeout_ms: int = 10_000,
        poll_interval_ms: int = 25,
        idle_poll_interval_ms: int = 200,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
    ) -> None:
        if default_partitions < 1:
            raise ValueError("default_partitions must be >= 1")
        self.path = Path(path)
        self.default_partitions = default_partitions
        self.session_timeout_ms = session_timeout_ms
        self.poll_interval_s = poll_interval_ms / 1000
        # A consumer that keeps finding nothing polls less often, doubling up to this: an idle topic
        # (the catalogue, promotions, erasures) cost a serving process ~10 % of a core at 25 ms.
        self.idle_poll_interval_s = max(self.poll_interval_s, idle_poll_interval_ms / 1000)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        # One connection per bus, serialised by this lock; calls run in worker threads.
        self._lock = threading.RLock()
        # Partition counts never change once a topic exists, so they are safe to cache.
        self._partitions: dict[str, int] = {}
        self._rr: dict[str, int] = {}
        self._producer: SqliteProducer | None = None
        self._last_retention: dict[str, float] = {}
        self._consumers: set[SqliteConsumer] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is None:
                conn = connect(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)
                with write_txn(conn):
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                self._conn = conn
            return self._conn

    async def start(self) -> None:
        await asyncio.to_thread(self._db)

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        if self._producer is not None:
            await self._producer.flush()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def healthy(self) -> bool:
        def probe() -> bool:
            with self._lock:
                self._db().execute("SELECT 1").fetchone()
            return True

        try:
            return await asyncio.to_thread(probe)
        except sqlite3.Error:
            return False

    # -- topics ----------------------------------------------------------------------------------------

    def _create_topic(self, conn: sqlite3.Connection, name: str, partitions: int, retention_ms: int | None) -> int:
        """Inside a write transaction: create ``name`` unless it exists; returns its partition count."""
        conn.execute(
            "INSERT OR IGNORE INTO topics(name, partitions, retention_ms, created_ms) VALUES (?, ?, ?, ?)",
            (name, partitions, retention_ms, _now_ms()),
        )
        if retention_ms is not None:  # an existing topic takes the configured retention too, as on Kafka
            conn.execute("UPDATE topics SET retention_ms = ? WHERE name = ?", (retention_ms, name))
        (n,) = conn.execute("SELECT partitions FROM topics WHERE name = ?", (name,)).fetchone()
        conn.executemany(
            "INSERT OR IGNORE INTO partitions(topic, partition, next_offset) VALUES (?, ?, 0)",
            [(name, p) for p in range(n)],
        )
        return int(n)

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        for spec in specs:
            if spec.partitions < 1:
                raise ValueError(f"topic {spec.name!r}: partitions must be >= 1, got {spec.partitions}")

        def run() -> None:
            with self._lock:
                conn = self._db()
                with write_txn(conn):
                    counts = {s.name: self._create_topic(conn, s.name, s.partitions, s.retention_ms) for s in specs}
                    for s in specs:  # trim now too: a topic nobody writes to any more is trimmed as well
                        if s.retention_ms is not None:
                            self._apply_retention(conn, s.name, _now_ms())
                self._partitions.update(counts)

        await asyncio.to_thread(run)

    def _partition_count(self, conn: sqlite3.Connection, topic: str) -> int | None:
        n = self._partitions.get(topic)
        if n is None:
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                return None  # absence is not cached: another process may create it any moment
            n = self._partitions[topic] = int(row[0])
        return n

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written per partition ({} when the topic does not exist)."""

        def run() -> dict[int, int]:
            with self._lock:
                rows = self._db().execute(
                    "SELECT partition, next_offset FROM partitions WHERE topic = ? ORDER BY partition", (topic,)
                )
                return {int(p): int(o) for p, o in rows}

        return await asyncio.to_thread(run)

    async def committed_offsets(self, group_id: str, topic: str) -> dict[int, int]:
        """The group's committed next-offset per partition of ``topic`` (monitoring, tests)."""

        def run() -> dict[int, int]:
            with self._lock:
                rows = self._db().execute(
                    "SELECT partition, next_offset FROM group_offsets WHERE group_id = ? AND topic = ?",
                    (group_id, topic),
                )
                return {int(p): int(o) for p, o in rows}

        return await asyncio.to_thread(run)

    # -- producing ------------------------------------------------------------------------------------

    def _append(self, batch: Sequence[tuple[str, OutgoingMessage]]) -> list[Placement]:
        """Append in ONE transaction; returns (partition, offset) per message, in order."""
        now = _now_ms()
        with self._lock:
            conn = self._db()
            with write_txn(conn):
                placed: list[tuple[int, int]] = []
                next_off: dict[TopicPartition, int] = {}
                created: dict[str, int] = {}  # cached only once the transaction committed
                # A batch's messages usually share one headers object (the sender's trace context):
                # encoded once per object, not once per message (a json.dumps each, ~2 µs).
                headers: dict[int, str | None] = {}
                rows = []
                for topic, msg in batch:
                    n = created.get(topic) or self._partition_count(conn, topic)
                    if n is None:  # Kafka's auto.create.topics.enable
                        n = created[topic] = self._create_topic(conn, topic, self.default_partitions, None)
                    if msg.key is None:
                        rr = self._rr.get(topic, 0)
                        self._rr[topic] = rr + 1
                        partition = partition_for(None, n, fallback=rr)
                    else:
                        partition = partition_for(msg.key, n)
                    tp = (topic, partition)
                    if tp not in next_off:
                        row = conn.execute(
                            "SELECT next_offset FROM partitions WHERE topic = ? AND partition = ?", tp
                        ).fetchone()
                        next_off[tp] = int(row[0]) if row else 0
                    offset = next_off[tp]
                    next_off[tp] = offset + 1
                    placed.append((partition, offset))
                    h = id(msg.headers)  # the batch holds every message, so no id is reused meanwhile
                    if h not in headers:
                        headers[h] = _encode_headers(msg.headers)
                    rows.append((topic, partition, offset, msg.key, bytes(msg.value), headers[h], now))
                conn.executemany(
                    "INSERT INTO messages(topic, partition, off, key, value, headers, ts_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.executemany(
                    "INSERT INTO partitions(topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT(topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                    [(t, p, o) for (t, p), o in next_off.items()],
                )
                for topic in {t for t, _ in next_off}:
                    self._apply_retention(conn, topic, now)
            self._partitions.update(created)
        return placed

    def _apply_retention(self, conn: sqlite3.Connection, topic: str, now_ms: int) -> None:
        """Inside a write transaction: drop messages older than the topic's ``retention_ms``.

        Throttled to once per ``RETENTION_CHECK_S`` per topic and process, like Kafka
        deleting whole old segments now and then rather than message by message.
        Offsets are never reused: the partition counters are untouched.
        """
        if time.monotonic() - self._last_retention.get(topic, float("-inf")) < self.RETENTION_CHECK_S:
            return
        self._last_retention[topic] = time.monotonic()
        row = conn.execute("SELECT retention_ms FROM topics WHERE name = ?", (topic,)).fetchone()
        if row is None or row[0] is None:
            return
        deleted = conn.execute(
            "DELETE FROM messages WHERE topic = ? AND ts_ms < ?", (topic, now_ms - int(row[0]))
        ).rowcount
        if deleted:
            log.info("retention: dropped %d messages of %s older than %d ms", deleted, topic, row[0])

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = SqliteProducer(self)
        return self._producer

    # -- consuming ------------------------------------------------------------------------------------

    async def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        member_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        consumer = SqliteConsumer(self, list(dict.fromkeys(topics)), group_id, member_id)
        await asyncio.to_thread(consumer._heartbeat)
        consumer._start_heartbeat()
        self._consumers.add(consumer)
        return consumer


class SqliteProducer(Producer):
    """Group-commits concurrent sends: one transaction (one fsync) per burst, not per message or per batch.

    ``send`` and ``send_batch`` queue their messages; one flusher appends everything queued so far in
    one transaction, and each caller returns once its own messages are durable.  A batch keeps its
    messages together and in order.  When a combined append fails, each sender's messages are
    appended alone, so one failing sender never fails the others' sends.
    """

    def __init__(self, bus: SqliteEventBus) -> None:
        self._bus = bus
        self._pending: list[tuple[list[tuple[str, OutgoingMessage]], asyncio.Future[list[Placement]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _enqueue(self, messages: list[tuple[str, OutgoingMessage]]) -> asyncio.Future[list[Placement]]:
        fut: asyncio.Future[list[Placement]] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return fut

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[int, int]:
        placed = await self._enqueue([(topic, OutgoingMessage(value=value, key=key, headers=tuple(headers)))])
        return placed[0]

    async def _flush_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                placed = await asyncio.to_thread(self._bus._append, [m for messages, _ in batch for m in messages])
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(RuntimeError("send cancelled"))
                    raise
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(exc)
                    continue
                await self._append_one_by_one(batch)
                continue
            i = 0
            for messages, fut in batch:
                if not fut.done():
                    fut.set_result(placed[i : i + len(messages)])
                i += len(messages)

    async def _append_one_by_one(
        self, batch: list[tuple[list[tuple[str, OutgoingMessage]], asyncio.Future[list[Placement]]]]
    ) -> None:
        for messages, fut in batch:
            try:
                placed = await asyncio.to_thread(self._bus._append, messages)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(placed)

    async def send_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        if messages:
            await self._enqueue([(topic, m) for m in messages])

    async def flush(self) -> None:
        """Wait for queued sends (close() calls it so no acknowledged-to-be send is dropped)."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher


class SqliteConsumer(Consumer):
    """One member of a consumer group; its assignment is recomputed from the live members on every poll."""

    def __init__(self, bus: SqliteEventBus, topics: list[str], group_id: str, member_id: str) -> None:
        self._bus = bus
        self.topics = topics
        self.group_id = group_id
        self.member_id = member_id
        self._positions: dict[TopicPartition, int] = {}  # next offset to return, per owned partition
        self._committed: dict[TopicPartition, int] = {}  # what this member last wrote, to skip no-op commits
        self._assigned: tuple[TopicPartition, ...] = ()
        self._rotation = 0
        self._idle_sleep = bus.poll_interval_s
        self._hb_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def assignment(self) -> tuple[TopicPartition, ...]:
        """Partitions this member owned at its last poll."""
        return self._assigned

    # -- membership -----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew this member's lease (re-joining if it had expired) and purge dead members' rows."""
        now = _now_ms()
        with self._bus._lock:
            conn = self._bus._db()
            with write_txn(conn):
                conn.execute(
                    "INSERT INTO members(group_id, member_id, topics, expires_ms, joined_ms) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(group_id, member_id) DO UPDATE SET expires_ms = excluded.expires_ms",
                    (self.group_id, self.member_id, json.dumps(self.topics), now + self._bus.session_timeout_ms, now),
                )
                conn.execute("DELETE FROM members WHERE group_id = ? AND expires_ms < ?", (self.group_id, now))

    def _start_heartbeat(self) -> None:
        async def beat() -> None:
            interval = self._bus.session_timeout_ms / 3000
            while True:
                await asyncio.sleep(interval)
                try:
                    await asyncio.to_thread(self._heartbeat)
                except sqlite3.Error:
                    log.warning("bus heartbeat failed for %s in group %s", self.member_id, self.group_id, exc_info=True)

        self._hb_task = asyncio.create_task(beat(), name=f"bus-heartbeat-{self.member_id}")

    def _rebalance(self, conn: sqlite3.Connection) -> None:
        """Recompute this member's partitions from the live members; new partitions start at the committed offset."""
        now = _now_ms()
        members = {
            m: json.loads(t)
            for m, t in conn.execute(
                "SELECT member_id, topics FROM members WHERE group_id = ? AND expires_ms >= ?", (self.group_id, now)
            )
        }
        members.setdefault(self.member_id, self.topics)  # our lease may have lapsed; the next heartbeat renews it
        counts: dict[str, int] = {}
        for topic in {t for ts in members.values() for t in ts}:
            n = self._bus._partition_count(conn, topic)
            if n:
                counts[topic] = n
        mine = tuple(assign_round_robin(members, counts)[self.member_id])
        if mine == self._assigned:
            return
        owned = set(mine)
        for tp in list(self._positions):
            if tp not in owned:
                del self._positions[tp]
                self._committed.pop(tp, None)
        for tp in mine:
            if tp not in self._positions:
                self._positions[tp] = self._start_offset(conn, tp)
        if self._assigned:
            log.info("group %s member %s rebalanced: %d partitions", self.group_id, self.member_id, len(mine))
        self._assigned = mine

    def _start_offset(self, conn: sqlite3.Connection, tp: TopicPartition) -> int:
        row = conn.execute(
            "SELECT next_offset FROM group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
            (self.group_id, *tp),
        ).fetchone()
        if row is not None:
            self._committed[tp] = int(row[0])
            return int(row[0])
        # No committed offset: earliest retained message (auto.offset.reset=earliest).
        row = conn.execute("SELECT MIN(off) FROM messages WHERE topic = ? AND partition = ?", tp).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- reading --------------------------------------------------------------------------------------

    def _poll_once(self, max_records: int) -> list[Message]:
        with self._bus._lock:
            conn = self._bus._db()
            with read_txn(conn):
                self._rebalance(conn)
                if not self._assigned:
                    return []
                ends: dict[TopicPartition, int] = {}
                for topic in {t for t, _ in self._assigned}:
                    for p, end in conn.execute(
                        "SELECT partition, next_offset FROM partitions WHERE topic = ?", (topic,)
                    ):
                        ends[(topic, int(p))] = int(end)
                ready = [tp for tp in self._assigned if ends.get(tp, 0) > self._positions[tp]]
                if not ready:
                    return []
                # Rotate the starting partition so one busy partition cannot starve the others.
                start = self._rotation % len(ready)
                self._rotation += 1
                ready = ready[start:] + ready[:start]
                out: list[Message] = []
                share = max(1, max_records // len(ready))
                for i, tp in enumerate(ready):
                    room = max_records - len(out)
                    if room <= 0:
                        break
                    # An equal share each; the last partition may use what the others left.
                    take = room if i == len(ready) - 1 else min(room, share)
                    rows = conn.execute(
                        "SELECT off, key, value, headers, ts_ms FROM messages "
                        "WHERE topic = ? AND partition = ? AND off >= ? ORDER BY off LIMIT ?",
                        (*tp, self._positions[tp], take),
                    ).fetchall()
                    for off, key, value, headers, ts in rows:
                        out.append(Message(tp[0], tp[1], int(off), key, value, _decode_headers(headers), int(ts)))
                    if rows:
                        self._positions[tp] = int(rows[-1][0]) + 1
                return out

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 500) -> list[Message]:
        if self._stopped:
            raise RuntimeError(f"consumer {self.member_id} of group {self.group_id} is stopped")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            msgs = await asyncio.to_thread(self._poll_once, max(1, max_records))
            if msgs:
                self._idle_sleep = self._bus.poll_interval_s
                return msgs
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await asyncio.sleep(min(self._idle_sleep, left))
            self._idle_sleep = min(self._idle_sleep * 2, self._bus.idle_poll_interval_s)

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        wanted = dict(self._positions) if offsets is None else {(t, int(p)): int(o) for (t, p), o in offsets.items()}
        todo = {tp: o for tp, o in wanted.items() if self._committed.get(tp) != o}
        if not todo:
            return

        def run() -> None:
            now = _now_ms()
            with self._bus._lock:
                conn = self._bus._db()
                with write_txn(conn):
                    conn.executemany(
                        "INSERT INTO group_offsets(group_id, topic, partition, next_offset, updated_ms) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(group_id, topic, partition) "
                        "DO UPDATE SET next_offset = excluded.next_offset, updated_ms = excluded.updated_ms",
                        [(self.group_id, t, p, o, now) for (t, p), o in todo.items()],
                    )

        await asyncio.to_thread(run)
        self._committed.update(todo)

    async def lag_by_partition(self) -> dict[tuple[str, int], int]:
        def run() -> dict[tuple[str, int], int]:
            with self._bus._lock:
                conn = self._bus._db()
                with read_txn(conn):
                    self._rebalance(conn)
                    lags: dict[tuple[str, int], int] = {}
                    for topic, p in self._assigned:
                        row = conn.execute(
                            "SELECT next_offset FROM partitions WHERE topic = ? AND partition = ?", (topic, p)
                        ).fetchone()
                        end = int(row[0]) if row else 0
                        committed = conn.execute(
                            "SELECT next_offset FROM group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
                            (self.group_id, topic, p),
                        ).fetchone()
                        if committed is not None:
                            base = int(committed[0])
                        else:
                            first = conn.execute(
                                "SELECT MIN(off) FROM messages WHERE topic = ? AND partition = ?", (topic, p)
                            ).fetchone()
                            base = int(first[0]) if first and first[0] is not None else end
                        lags[(topic, p)] = max(0, end - base)
                    return lags

        return await asyncio.to_thread(run)

    async def stop(self) -> None:
        """Leave the group now (no wait for the lease to expire); uncommitted work goes to the next owner."""
        if self._stopped:
            return
        self._stopped = True
        if self._hb_task is not None:
            self._hb_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hb_task

        def leave() -> None:
            with self._bus._lock:
                conn = self._bus._db()
                with write_txn(conn):
                    conn.execute(
                        "DELETE FROM members WHERE group_id = ? AND member_id = ?", (self.group_id, self.member_id)
                    )

        try:
            await asyncio.to_thread(leave)
        finally:
            self._bus._consumers.discard(self)
