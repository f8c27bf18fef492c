"""Apache Kafka event bus (aiokafka): the production implementation of :class:`EventBus`.

Choices that matter to callers:

* **Partitioning.**  The producer places a keyed message with the interface's own
  :func:`partition_for` (CRC32 of the key), through aiokafka's ``partitioner`` hook, instead of
  Kafka's murmur2.  The embedded log uses the same function, so a user's events land on the same
  partition number on both backends and tests of per-key ordering mean the same thing.  A message
  without a key goes to a random available partition, as Kafka's own clients do.  Producers in other
  languages must use CRC32 too if they share these topics.
* **Durability.**  Idempotent producer with ``acks=all``: ``send`` returns only once the broker has
  the message, and a retried batch is never written twice.
* **Transient failures** (broker restart, leader change, connection refused) are retried with
  exponential backoff until ``send_timeout_s``; then :class:`BusUnavailable` says which topic and
  key could not be written, so the caller can fail the request instead of hanging.
* **Consumers** never auto-commit and start at the earliest offset when their group has no
  commit: offsets move only when the caller says the work is done (at-least-once).  Kafka's
  eager rebalance revokes every partition when a member joins or leaves and restarts each from
  its committed offset; a member that keeps a partition continues from where it was instead, so
  a rebalance does not hand the same uncommitted messages to the same member twice.

* **Topics** are created with ``replication_factor`` replicas and, when given,
  ``min.insync.replicas``: with ``acks=all`` a write then needs that many live copies, so 3/2
  survives one broker down without losing an acknowledged event.  Per-topic configs of the
  registry (``models.promoted`` is compacted) are applied on creation.  A topic that already
  exists keeps its partitions and replication (changing those is an operator's reassignment), but
  gets the configured ``retention.ms`` (AlterConfigs, with the configs it was created with): the
  retention bounds how long erased users' data stays on the bus.
* **Compression** (``compression_type``, default none) is done by the producer; consumers need
  the same codec (lz4, snappy and zstd come from ``cramjam``, the ``kafka`` extra's
  ``aiokafka[lz4]``), so an unavailable codec stops the bus at construction.

Query parameters of ``kafka://`` URLs (all optional) map to constructor keywords:
``replication_factor``, ``min_insync_replicas``, ``compression_type``, ``send_timeout_s``,
``request_timeout_ms``, ``join_timeout_s``, ``linger_ms``, ``session_timeout_ms``,
``heartbeat_interval_ms``, ``tls_reload_s``.  The Helm chart renders the first three from its ``kafka`` values.

Connection security (TLS, mutual TLS, SASL PLAIN/SCRAM) is not in the URL, which is logged and shown:
``client_options`` carries aiokafka's keywords, which services build from their KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_* and KAFKA_SSL_* settings (``ServiceSettings.kafka_client_options``); every producer, consumer
and admin client of the bus uses them. Their TLS context is a ``scalerec_core.tls.ReloadingSSLContext``: a
started bus looks at its files every ``tls_reload_s`` (30 s) and loads them again when a renewed
certificate has replaced them, so connections opened after that present it, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition, codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotControllerError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import OffsetAndMetadata
from scalerec_core.logging import key_ref
from scalerec_core.tls import ReloadingSSLContext
from scalerec_events.topics import TopicSpec

from scalerec_adapters.bus import (
    BusUnavailable,
    Consumer,
    EventBus,
    Headers,
    Message,
    OutgoingMessage,
    Producer,
    partition_for,
)

log = logging.getLogger(__name__)

# Kafka's TOPIC_ALREADY_EXISTS error code: ensure_topics leaves existing topics as they are.
_TOPIC_ALREADY_EXISTS = 36
_INT_PARAMS = (
    "replication_factor",
    "min_insync_replicas",
    "request_timeout_ms",
    "linger_ms",
    "session_timeout_ms",
    "heartbeat_interval_ms",
)
_FLOAT_PARAMS = ("send_timeout_s", "join_timeout_s", "tls_reload_s")
_STR_PARAMS = ("compression_type",)
# aiokafka's codecs; all but gzip need cramjam.
_CODECS = {
    "none": None,
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}


def _retriable(exc: BaseException) -> bool:
    """Errors a broker restart or a leader election produces; anything else is a bug or bad input."""
    if isinstance(
        exc,
        KafkaConnectionError
        | KafkaTimeoutError
        | NodeNotReadyError
        | RequestTimedOutError
        | NotControllerError
        | UnknownTopicOrPartitionError
        | asyncio.TimeoutError
        | ConnectionError,
    ):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


# The producer's idempotence state no longer matches the broker's: a batch it had numbered never
# arrived (it was in flight when the broker stopped, and the send was given up), so the broker
# refuses every later sequence number for that partition. aiokafka cannot recover such a producer
# (its sender stops), so the bus replaces it: a new producer id starts its sequences afresh. A message
# re-sent that way may already be stored once; every consumer dedupes by event id.
_PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


def _crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka partitioner hook: the interface's ``partition_for`` so both backends place keys alike."""
    if key is None:
        return random.choice(available or all_partitions)
    ordered = sorted(all_partitions)
    return ordered[partition_for(key, len(ordered))]


class _Backoff:
    """Exponential backoff with jitter, bounded by a deadline (monotonic seconds)."""

    def __init__(self, deadline: float, first: float = 0.1, cap: float = 2.0) -> None:
        self.deadline = deadline
        self._delay = first
        self._cap = cap

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    async def sleep(self) -> None:
        remaining = self.deadline - time.monotonic()
        await asyncio.sleep(max(0.0, min(self._delay * (0.5 + random.random()), remaining)))
        self._delay = min(self._delay * 2, self._cap)


class KafkaProducer(Producer):
    """Wraps the bus's single aiokafka producer; safe to share among tasks."""

    def __init__(self, bus: KafkaEventBus) -> None:
        self._bus = bus

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[int, int]:
        meta = await self._bus._send_with_retry(topic, value, key, list(headers))
        return meta.partition, meta.offset

    async def send_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        # Enqueue everything first so aiokafka packs the messages into few produce requests; messages
        # whose batch failed (broker went away mid-flight) are re-sent one by one with the retry loop.
        # One deadline for the whole batch: aiokafka keeps retrying an enqueued batch while the broker
        # is away, so without it a caller would wait out the outage instead of getting BusUnavailable.
        deadline = time.monotonic() + self._bus.send_timeout_s
        producer = await self._bus._live_producer()
        futures: list[asyncio.Future[Any] | BaseException] = []
        for m in messages:
            try:
                futures.append(await producer.send(topic, m.value, key=m.key, headers=list(m.headers)))
            except Exception as exc:
                futures.append(exc)
        # One wait for all of them (a wait_for per message cost ~10 µs of the loop's CPU each).
        enqueued = [f for f in futures if not isinstance(f, BaseException)]
        if enqueued:
            done, late = await asyncio.wait(enqueued, timeout=max(0.1, deadline - time.monotonic()))
            if late:
                for f in done:  # a refused producer is replaced now, so the next request gets a new one
                    failure = None if f.cancelled() else f.exception()
                    if failure is not None:
                        await self._bus._worth_retrying(producer, failure)
                raise BusUnavailable(
                    f"could not send {len(messages)} message(s) to {topic!r} on Kafka "
                    f"{self._bus.bootstrap_servers} within {self._bus.send_timeout_s:.0f}s"
                )
        for m, fut in zip(messages, futures, strict=True):
            if isinstance(fut, BaseException):
                err: BaseException | None = fut
            elif fut.cancelled():  # the producer was stopped under it (a reconnect): send it again
                err = KafkaConnectionError(f"send to {topic!r} cancelled")
            else:
                err = fut.exception()
            if err is not None:
                if not await self._bus._worth_retrying(producer, err):
                    raise err
                await self._bus._send_with_retry(topic, m.value, m.key, list(m.headers), deadline=deadline)


class _KeepPositions(ConsumerRebalanceListener):
    """Carries a member's read positions over a rebalance for the partitions it keeps."""

    def __init__(self) -> None:
        self.member: KafkaConsumer | None = None
        self._held: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.member is not None:
            gone = set(revoked)
            self._held = {tp: off for tp, off in self.member._returned.items() if tp in gone}

    async def on_partitions_assigned(self, assigned: Any) -> None:
        member, held, self._held = self.member, self._held, {}
        if member is None:
            return
        assigned = set(assigned)
        member._returned = {tp: off for tp, off in member._returned.items() if tp in assigned}
        for tp, position in held.items():
            if tp not in assigned:
                continue
            committed = await member._consumer.committed(tp)
            # Another member may have committed further while it owned the partition: never go back.
            if committed is None or position > committed:
                member._consumer.seek(tp, position)
                member._returned[tp] = position


class KafkaConsumer(Consumer):
    """One member of a consumer group; commits only what the caller says is done."""

    def __init__(self, consumer: AIOKafkaConsumer, group_id: str) -> None:
        self._consumer = consumer
        self._group_id = group_id
        # Next offset to read per partition, for everything getmany handed out (commit(None) commits it).
        self._returned: dict[TopicPartition, int] = {}

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 500) -> list[Message]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                out.append(
                    Message(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value if r.value is not None else b"",
                        headers=tuple((k, bytes(v)) for k, v in (r.headers or ())),
                        timestamp_ms=r.timestamp,
                    )
                )
            if records:
                self._returned[tp] = records[-1].offset + 1
        out.sort(key=lambda m: (m.topic, m.partition, m.offset))
        return out

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        assigned = self._consumer.assignment()
        if offsets is None:
            # Partitions taken away by a rebalance are no longer ours to commit; their new owner re-reads them.
            todo = {tp: off for tp, off in self._returned.items() if tp in assigned}
        else:
            todo = {TopicPartition(t, p): off for (t, p), off in offsets.items()}
        if not todo:
            return
        await self._consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in todo.items()})

    async def lag_by_partition(self) -> dict[tuple[str, int], int]:
        partitions = sorted(self._consumer.assignment())
        if not partitions:
            return {}
        ends = await self._consumer.end_offsets(partitions)
        starts = await self._consumer.beginning_offsets(partitions)
        lags: dict[tuple[str, int], int] = {}
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            base = committed if committed is not None else starts.get(tp, 0)
            lags[(tp.topic, tp.partition)] = max(0, ends.get(tp, 0) - base)
        return lags

    async def stop(self) -> None:
        # Leaves the group at once so the others rebalance now, not after the session timeout.
        await self._consumer.stop()


class KafkaEventBus(EventBus):
    """Topics, keyed partitions and consumer groups on a Kafka cluster."""

    def __init__(
        self,
        bootstrap_servers: str,
        default_partitions: int,
        client_id: str,
        client_options: Mapping[str, Any] | None = None,
        **query_params: Any,
    ) -> None:
        known = _INT_PARAMS + _FLOAT_PARAMS + _STR_PARAMS
        unknown = set(query_params) - set(known)
        if unknown:
            raise ValueError(f"unknown kafka:// URL parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        params: dict[str, Any] = {k: int(v) for k, v in query_params.items() if k in _INT_PARAMS}
        params.update({k: float(v) for k, v in query_params.items() if k in _FLOAT_PARAMS})
        self.bootstrap_servers = bootstrap_servers
        # Connection security for every client the bus makes (security_protocol, ssl_context, sasl_*):
        # ServiceSettings.kafka_client_options(), from the KAFKA_SECURITY_PROTOCOL family of settings.
        self._client_options: dict[str, Any] = dict(client_options or {})
        self.default_partitions = default_partitions
        self.client_id = client_id
        self.replication_factor: int = params.get("replication_factor", 1)
        # 0 = the broker's default (min.insync.replicas=1 unless the cluster sets it).
        self.min_insync_replicas: int = params.get("min_insync_replicas", 0)
        if self.replication_factor < 1 or not 0 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(
                f"kafka:// replication_factor={self.replication_factor} min_insync_replicas="
                f"{self.min_insync_replicas}: need replication_factor >= 1 and min_insync_replicas <= it "
                "(acks=all writes would be refused otherwise)"
            )
        self.compression_type: str = str(query_params.get("compression_type", "none"))
        if self.compression_type not in _CODECS:
            raise ValueError(f"kafka:// compression_type={self.compression_type!r}: one of {sorted(_CODECS)}")
        available = _CODECS[self.compression_type]
        if available is not None and not available():
            raise ValueError(
                f"kafka:// compression_type={self.compression_type}: its codec is not installed "
                "(pip install 'aiokafka[lz4]', which the scalerec-libs[kafka] extra pulls in)"
            )
        self.send_timeout_s: float = params.get("send_timeout_s", 30.0)
        self.join_timeout_s: float = params.get("join_timeout_s", 15.0)
        # How often a started bus looks whether its TLS files were replaced (a renewed client certificate).
        self.tls_reload_s: float = params.get("tls_reload_s", 30.0)
        if self.tls_reload_s <= 0:
            raise ValueError(f"kafka:// tls_reload_s={self.tls_reload_s}: must be above 0")
        self._tls_watch: asyncio.Task[None] | None = None
        self._request_timeout_ms: int = params.get("request_timeout_ms", 10_000)
        self._linger_ms: int = params.get("linger_ms", 0)
        self._session_timeout_ms: int = params.get("session_timeout_ms", 10_000)
        self._heartbeat_interval_ms: int = params.get("heartbeat_interval_ms", 1_000)
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._consumers: list[KafkaConsumer] = []
        self._started = False

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the producer, retrying until ``send_timeout_s`` so a service may start before Kafka."""
        self._started = True
        await self._live_producer()
        context = self._client_options.get("ssl_context")
        if isinstance(context, ReloadingSSLContext) and self._tls_watch is None:
            self._tls_watch = asyncio.create_task(self._watch_tls_files(context), name="kafka-tls-files")

    async def close(self) -> None:
        if self._tls_watch is not None:
            watch, self._tls_watch = self._tls_watch, None
            watch.cancel()
            try:
                await watch
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # close() itself was cancelled, not only the watch
        for c in list(self._consumers):
            with contextlib.suppress(Exception):
                await c.stop()
        self._consumers.clear()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        self._started = False

    async def _watch_tls_files(self, context: ReloadingSSLContext) -> None:
        """Every ``tls_reload_s``, the certificate files loaded again if they changed: each connection aiokafka
        opens afterwards (reconnects included) presents the renewed certificate, with no restart."""
        while True:
            await asyncio.sleep(self.tls_reload_s)
            try:
                context.reload_if_changed()
            except Exception:  # never let the watch die: the next look may succeed
                log.exception("looking at the Kafka TLS files failed")

    async def healthy(self) -> bool:
        admin = self._admin()
        try:
            await asyncio.wait_for(admin.start(), timeout=3)
            await asyncio.wait_for(admin.describe_cluster(), timeout=3)
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    # -- topics -----------------------------------------------------------------------------------

    def _admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self._request_timeout_ms,
            **self._client_options,
        )

    @property
    def security(self) -> str:
        """How the bus connects, for messages: "PLAINTEXT", or e.g. "SASL_SSL (SCRAM-SHA-512 as 'scalerec')"."""
        protocol = self._client_options.get("security_protocol", "PLAINTEXT")
        if "sasl_mechanism" in self._client_options:
            user = self._client_options.get("sasl_plain_username")
            return f"{protocol} ({self._client_options['sasl_mechanism']} as {user!r})"
        return str(protocol)

    def _unreachable(self) -> str:
        """What a failed connection says: aiokafka reports an authentication or certificate failure only in its
        log ("Unable connect to ...") and raises a bare "Unable to bootstrap", so name what was tried."""
        where = f"Kafka {self.bootstrap_servers}"
        if not self._client_options:
            return where
        return f"{where} over {self.security} (refused credentials or certificates are in aiokafka's log above)"

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the missing topics and wait until every partition has a leader (writable at once)."""
        backoff = _Backoff(time.monotonic() + self.send_timeout_s)
        while True:
            admin = self._admin()
            try:
                await admin.start()
                existing = set(await admin.list_topics())
                missing = [s for s in specs if s.name not in existing]
                if missing:
                    resp = await admin.create_topics(self.new_topics(missing))
                    for name, code, *rest in resp.topic_errors:
                        if code not in (0, _TOPIC_ALREADY_EXISTS):
                            msg = rest[0] if rest else ""
                            raise BusUnavailable(f"Kafka refused to create topic {name!r}: error {code} {msg}")
                await self._apply_retention(admin, [s for s in specs if s.name in existing])
                await self._wait_for_leaders(admin, [s.name for s in specs], backoff.deadline)
                return
            except BusUnavailable:
                raise
            except Exception as exc:
                if not _retriable(exc) or backoff.expired():
                    raise BusUnavailable(
                        f"could not create topics {[s.name for s in specs]} on {self._unreachable()}: {exc!r}"
                    ) from exc
                await backoff.sleep()
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()

    async def _apply_retention(self, admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
        """Existing topics get the configured retention too: it bounds how long erased data stays on the bus.

        AlterConfigs replaces a topic's dynamic configs, so each is sent with all the configs the topic
        was created with (``new_topics``); topics without a retention (compacted, models) are left alone.
        A refusal (no ALTER_CONFIGS permission, say) is logged as an error, not fatal: the service still
        starts, and the operator sets the retention (the log line names the topic and the value).
        """
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, t.name, configs=t.topic_configs)
            for s, t in zip(specs, self.new_topics(specs), strict=True)
            if s.retention_ms
        ]
        if not resources:
            return
        wanted = {r.name: r.configs.get("retention.ms") for r in resources}
        for resp in await admin.alter_configs(resources):
            for code, message, _, name in resp.resources:
                if code != 0:
                    log.error(
                        "Kafka refused retention.ms=%s on existing topic %s (error %s %s): erased users' data stays "
                        "on it for the topic's own retention; set it there",
                        wanted.get(name),
                        name,
                        code,
                        message,
                    )

    def new_topics(self, specs: Sequence[TopicSpec]) -> list[NewTopic]:
        """What ``ensure_topics`` asks Kafka to create for ``specs``: partitions, replication, configs."""
        out = []
        for s in specs:
            configs = dict(s.configs)
            if s.retention_ms:
                configs["retention.ms"] = str(s.retention_ms)
            if self.min_insync_replicas:
                configs["min.insync.replicas"] = str(self.min_insync_replicas)
            out.append(
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=self.replication_factor,
                    topic_configs=configs,
                )
            )
        return out

    async def _wait_for_leaders(self, admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
        while True:
            topics = await admin.describe_topics(names)
            pending = [
                t["topic"]
                for t in topics
                if t["error_code"] != 0 or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])
            ]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise BusUnavailable(f"topics {pending} have no leader yet on Kafka {self.bootstrap_servers}")
            await asyncio.sleep(0.1)

    # -- producing --------------------------------------------------------------------------------

    def producer(self) -> Producer:
        return KafkaProducer(self)

    async def _live_producer(self) -> AIOKafkaProducer:
        """The shared producer, (re)started on demand: a broker down at start-up is retried, not fatal."""
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            backoff = _Backoff(time.monotonic() + self.send_timeout_s)
            while True:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=True,
                    partitioner=_crc32_partitioner,
                    compression_type=None if self.compression_type == "none" else self.compression_type,
                    linger_ms=self._linger_ms,
                    request_timeout_ms=self._request_timeout_ms,
                    retry_backoff_ms=200,
                    **self._client_options,
                )
                try:
                    await producer.start()
                    self._producer = producer
                    return producer
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    if not _retriable(exc) or backoff.expired():
                        raise BusUnavailable(f"{self._unreachable()} unreachable: {exc!r}") from exc
                    log.warning("%s not reachable yet (%r); retrying", self._unreachable(), exc)
                    await backoff.sleep()

    async def _worth_retrying(self, producer: AIOKafkaProducer | None, exc: BaseException) -> bool:
        """Whether a send that failed with ``exc`` may be tried again; a producer the broker refuses
        (``_PRODUCER_STATE_ERRORS``) is dropped first, if it is still the shared one, so the retry
        starts a new one."""
        if not isinstance(exc, _PRODUCER_STATE_ERRORS):
            return _retriable(exc)
        async with self._producer_lock:
            current = self._producer
            if producer is None or current is None or current is not producer:
                return True  # another task replaced it already
            self._producer = None
        log.warning("Kafka producer replaced: its sequence numbers no longer match the broker's (%r)", exc)
        # Its sender may have stopped, so a flush could wait forever: give it a moment, then drop it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(current.stop(), timeout=2)
        return True

    async def _send_with_retry(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        deadline: float | None = None,
    ) -> Any:
        """Send one message until it is acknowledged by all in-sync replicas or ``send_timeout_s`` passes."""
        backoff = _Backoff(deadline if deadline is not None else time.monotonic() + self.send_timeout_s)
        # Message keys are user ids: an error names the key by its keyed hash, as log lines do.
        ref = "none" if key is None else key_ref(key)
        attempt = 0
        while True:
            attempt += 1
            producer: AIOKafkaProducer | None = None
            try:
                producer = await self._live_producer()
                remaining = max(0.1, backoff.deadline - time.monotonic())
                return await asyncio.wait_for(
                    producer.send_and_wait(topic, value, key=key, headers=headers), timeout=remaining
                )
            except BusUnavailable as exc:
                raise BusUnavailable(f"could not send to {topic!r} (key {ref}): {exc}") from exc
            except Exception as exc:
                if not await self._worth_retrying(producer, exc) or backoff.expired():
                    raise BusUnavailable(
                        f"could not send to {topic!r} (key {ref}) on Kafka {self.bootstrap_servers} "
                        f"after {attempt} attempt(s) in {self.send_timeout_s:.0f}s: {exc!r}"
                    ) from exc
                log.warning("send to %s failed (%r), retrying", topic, exc)
                await backoff.sleep()

    # -- consuming --------------------------------------------------------------------------------

    async def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
        """Join ``group_id`` and wait (up to ``join_timeout_s``) for a partition assignment.

        Waiting makes "joined" mean the same as on the embedded bus: ``lag()`` and the first
        ``getmany`` see the assigned partitions at once instead of an empty set during the join.
        """
        backoff = _Backoff(time.monotonic() + self.send_timeout_s)
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                request_timeout_ms=max(self._request_timeout_ms, self._session_timeout_ms + 5_000),
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                retry_backoff_ms=200,
                **self._client_options,
            )
            listener = _KeepPositions()
            consumer.subscribe(list(topics), listener=listener)
            try:
                await consumer.start()
                break
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                if not _retriable(exc) or backoff.expired():
                    raise BusUnavailable(
                        f"could not join group {group_id!r} on {self._unreachable()}: {exc!r}"
                    ) from exc
                await backoff.sleep()
        join_deadline = time.monotonic() + self.join_timeout_s
        while not consumer.assignment() and time.monotonic() < join_deadline:
            await asyncio.sleep(0.05)
        wrapped = KafkaConsumer(consumer, group_id)
        listener.member = wrapped
        self._consumers.append(wrapped)
        return wrapped
