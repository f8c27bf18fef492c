"""The Kafka bus over TLS, mutual TLS and SASL (PLAIN, SCRAM-SHA-512) against the stack's real broker.

``scripts/stack/stack.sh up kafka`` gives its broker a SASL_SSL listener and an SSL listener that requires a
client certificate, with a CA and certificates it makes on first start. The bus is built the way the
services build it: settings (the KAFKA_* environment variables) -> ``kafka_client_options()`` -> ``make_bus``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from scalerec_adapters.bus import BusUnavailable, OutgoingMessage
from scalerec_adapters.factory import make_bus
from scalerec_adapters.kafka_bus import KafkaEventBus
from scalerec_core.settings import ServiceSettings
from scalerec_events.topics import TopicSpec

from tests.tls_files import encrypted_key, self_signed, swap_in

from .conftest import (
    HOST,
    KAFKA_MTLS_PORT,
    KAFKA_PASSWORD,
    KAFKA_SASL_SSL_PORT,
    KAFKA_TLS_DIR,
    KAFKA_USER,
    require_server,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(autouse=True)
def _secured_listeners() -> None:
    require_server("Kafka's SASL_SSL listener", KAFKA_SASL_SSL_PORT, "SCALEREC_KAFKA_SASL_SSL_PORT")
    require_server("Kafka's mutual-TLS listener", KAFKA_MTLS_PORT, "SCALEREC_KAFKA_MTLS_PORT")


def _bus(port: int, timeout_s: float = 20, **env: Any) -> KafkaEventBus:
    settings = ServiceSettings(**env)
    bus = make_bus(
        f"kafka://{HOST}:{port}?send_timeout_s={timeout_s}&join_timeout_s=10",
        partitions=2,
        client_id="it-security",
        kafka_options=settings.kafka_client_options(),
    )
    assert isinstance(bus, KafkaEventBus)
    return bus


SASL_SSL = dict(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=KAFKA_TLS_DIR / "ca.crt")
MUTUAL_TLS = dict(
    kafka_security_protocol="SSL",
    kafka_ssl_cafile=KAFKA_TLS_DIR / "ca.crt",
    kafka_ssl_certfile=KAFKA_TLS_DIR / "client.crt",
    kafka_ssl_keyfile=KAFKA_TLS_DIR / "client.key",
)


@pytest.mark.parametrize(
    ("port", "env"),
    [
        (KAFKA_SASL_SSL_PORT, {**SASL_SSL, "kafka_sasl_mechanism": "SCRAM-SHA-512"}),
        (KAFKA_SASL_SSL_PORT, {**SASL_SSL, "kafka_sasl_mechanism": "PLAIN"}),
        (KAFKA_MTLS_PORT, MUTUAL_TLS),
    ],
    ids=["sasl-ssl-scram", "sasl-ssl-plain", "mutual-tls"],
)
async def test_the_bus_works_whole_over_a_secured_listener(port: int, env: dict[str, Any]) -> None:
    """Topics, a keyed batch, a consumer group reading it back and committing, and the health check: every
    client the bus makes (admin, producer, consumer) carries the security settings."""
    if "kafka_sasl_mechanism" in env:
        env = {**env, "kafka_sasl_username": KAFKA_USER, "kafka_sasl_password": KAFKA_PASSWORD}
    await _round_trip(port, env)


async def test_mutual_tls_with_an_encrypted_client_key(tmp_path: Path) -> None:
    """The client key encrypted (as many PKIs issue them), unlocked by KAFKA_SSL_KEY_PASSWORD."""
    encrypted = encrypted_key(KAFKA_TLS_DIR / "client.key", tmp_path / "client-encrypted.key", "k3y-pass")
    await _round_trip(
        KAFKA_MTLS_PORT, {**MUTUAL_TLS, "kafka_ssl_keyfile": encrypted, "kafka_ssl_key_password": "k3y-pass"}
    )


async def _round_trip(port: int, env: dict[str, Any]) -> None:
    bus = _bus(port, **env)
    await bus.start()
    try:
        assert await bus.healthy()
        topic = f"it.secure.{uuid.uuid4().hex[:10]}"
        await bus.ensure_topics([TopicSpec(topic, 2)])
        sent = [OutgoingMessage(b"m%d" % i, key=b"u%d" % i) for i in range(20)]
        await bus.producer().send_batch(topic, sent)
        consumer = await bus.consumer([topic], f"it.secure.group.{uuid.uuid4().hex[:8]}")
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < deadline:
            got += [m.value for m in await consumer.getmany(timeout_ms=300)]
        await consumer.commit()
        await consumer.stop()
        assert sorted(got) == sorted(m.value for m in sent)
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("port", "env", "named"),
    [
        (
            KAFKA_SASL_SSL_PORT,
            {**SASL_SSL, "kafka_sasl_username": KAFKA_USER, "kafka_sasl_password": "not-the-password"},
            "SASL_SSL (SCRAM-SHA-512 as 'scalerec')",
        ),
        (
            KAFKA_SASL_SSL_PORT,
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_username": KAFKA_USER,
                "kafka_sasl_password": KAFKA_PASSWORD,
            },
            "SASL_SSL",  # the system's CAs do not know the stack's CA: the broker is not trusted
        ),
        (KAFKA_MTLS_PORT, {k: v for k, v in MUTUAL_TLS.items() if "cafile" in k or "protocol" in k}, "over SSL"),
        (KAFKA_SASL_SSL_PORT, {}, "Kafka"),  # plain text to a TLS listener
    ],
    ids=["wrong-password", "untrusted-broker", "no-client-certificate", "plaintext-to-tls"],
)
async def test_a_refused_connection_is_bus_unavailable_naming_how_it_connected(
    port: int, env: dict[str, Any], named: str
) -> None:
    """Wrong credentials or certificates: the bus does not hang or crash its service; it gives up at its deadline
    with BusUnavailable (a 503 at the collector, a failed start elsewhere) naming the protocol and the user."""
    bus = _bus(port, timeout_s=3, **env)
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as err:
        await bus.start()
    assert time.monotonic() - started < 30
    assert named in str(err.value) and KAFKA_PASSWORD not in str(err.value) and "not-the-password" not in str(err.value)
    assert not await bus.healthy()
    await bus.close()


def test_the_collector_publishes_over_sasl_ssl_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service end: the collector configured only through its environment (as the chart does) answers 202
    and its events are on the topic, read back by a consumer with the same settings."""
    from fastapi.testclient import TestClient
    from scalerec_collector.config import CollectorSettings
    from scalerec_collector.main import create_app
    from scalerec_events.topics import Topic

    deployment = f"sec{uuid.uuid4().hex[:8]}"
    env = {
        "BUS_URL": f"kafka://{HOST}:{KAFKA_SASL_SSL_PORT}?send_timeout_s=20",
        "DEPLOYMENT": deployment,
        "DATA_DIR": str(tmp_path),
        "AUTH": "disabled",
        "TOPIC_PARTITIONS": "1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": KAFKA_USER,
        "KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "KAFKA_SSL_CAFILE": str(KAFKA_TLS_DIR / "ca.crt"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = CollectorSettings()
    events = [
        {
            "event_id": f"e-{uuid.uuid4()}",
            "user_id": "u1",
            "item_id": f"i{n}",
            "type": "view",
            "timestamp": "2026-12-07T10:00:00Z",
        }
        for n in range(5)
    ]
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 202, r.text

    async def read_back() -> list[bytes]:
        bus = _bus(KAFKA_SASL_SSL_PORT, **{k.lower(): v for k, v in env.items() if k.startswith("KAFKA_")})
        await bus.start()
        try:
            consumer = await bus.consumer([settings.topic(Topic.EVENTS_RAW)], f"{deployment}.check")
            got: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(got) < len(events) and time.monotonic() < deadline:
                got += [m.value for m in await consumer.getmany(timeout_ms=300)]
            await consumer.stop()
            return got
        finally:
            await bus.close()

    got = asyncio.run(read_back())
    assert sorted(json.loads(v)["event_id"] for v in got) == sorted(e["event_id"] for e in events)


async def test_a_renewed_client_certificate_is_used_without_a_restart(tmp_path: Path) -> None:
    """Mutual TLS with the certificate files replaced under a started bus, as Kubernetes replaces a Secret's
    files when cert-manager renews them: the bus loads them again, and the connections it opens after that
    present the new certificate. Proved both ways: swapped for a certificate the broker does not trust, new
    connections are refused; swapped back, they are accepted again."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(source_cert: Path, source_key: Path) -> None:
        swap_in(cert, source_cert)
        swap_in(key, source_key)

    stranger_cert, stranger_key = self_signed(tmp_path, "stranger")
    install(KAFKA_TLS_DIR / "client.crt", KAFKA_TLS_DIR / "client.key")
    settings = ServiceSettings(**{**MUTUAL_TLS, "kafka_ssl_certfile": cert, "kafka_ssl_keyfile": key})
    bus = make_bus(
        f"kafka://{HOST}:{KAFKA_MTLS_PORT}?send_timeout_s=20&tls_reload_s=0.2",
        partitions=2,
        client_id="it-security-renewal",
        kafka_options=settings.kafka_client_options(),
    )
    await bus.start()
    try:
        assert await bus.healthy()
        install(stranger_cert, stranger_key)
        await asyncio.sleep(1.0)
        assert not await bus.healthy(), "new connections still presented the certificate loaded at start"
        install(KAFKA_TLS_DIR / "client.crt", KAFKA_TLS_DIR / "client.key")
        await asyncio.sleep(1.0)
        assert await bus.healthy()
    finally:
        await bus.close()
