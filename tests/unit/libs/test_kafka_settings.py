"""kafka:// URL parameters that decide how topics are created: checked when the bus is built,
before any connection, so a bad value stops the service at start with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from scalerec_adapters.factory import make_bus
from scalerec_events.topics import all_topics

from tests.tls_files import encrypted_key, self_signed


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
    [
        "replication_factor=2&min_insync_replicas=3",
        "replication_factor=0",
        "compression_type=brotli",
        "acks=1",
        "tls_reload_s=0",
    ],
)
def test_a_bad_parameter_is_refused_with_the_reason(query: str) -> None:
    with pytest.raises(ValueError, match="kafka://"):
        make_bus(f"kafka://k:9092?{query}")


# -- connection security: the KAFKA_SECURITY_PROTOCOL family of settings ---------------------------------


def _security(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    from scalerec_core.settings import ServiceSettings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServiceSettings().kafka_client_options()


def test_plaintext_adds_nothing_and_sasl_ssl_carries_the_user_and_a_verifying_tls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    assert _security(monkeypatch) == {}
    options = _security(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD="pw",
    )
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname  # the system's CAs, names checked
    # What the bus says about how it connects (in its errors) names the user, never the password.
    bus = make_bus("kafka://k:9093", kafka_options=_security(monkeypatch))
    assert bus.security == "SASL_SSL (PLAIN as 'svc')"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SSL_CAFILE": "/etc/ca.crt"}, "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"}, "KAFKA_SSL_KEYFILE go together"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nowhere/ca.crt"}, "KAFKA_SSL_CAFILE=/nowhere"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_a_wrong_security_setting_stops_the_service_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        _security(monkeypatch, **env)


def test_a_client_certificate_that_does_not_load_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"KAFKA_SSL_CERTFILE=.*client\.crt.*not a readable PEM certificate"):
        _security(
            monkeypatch,
            KAFKA_SECURITY_PROTOCOL="SSL",
            KAFKA_SSL_CERTFILE=str(cert),
            KAFKA_SSL_KEYFILE=str(cert),
        )


@pytest.fixture(scope="module")
def encrypted_client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A self-signed client certificate, its key in clear and the same key encrypted with 's3cret' (openssl)."""
    folder = tmp_path_factory.mktemp("client-key")
    cert, key = self_signed(folder, "client")
    encrypted = encrypted_key(key, folder / "client-encrypted.key", "s3cret")
    assert encrypted.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    return cert, key, encrypted


def test_an_encrypted_client_key_loads_with_its_passphrase_and_is_named_without_it(
    monkeypatch: pytest.MonkeyPatch, encrypted_client_key: tuple[Path, Path, Path]
) -> None:
    """Without KAFKA_SSL_KEY_PASSWORD an encrypted key stops the service naming the setting (OpenSSL's own
    answer would be a passphrase prompt on the terminal: a service started from a shell waited there)."""
    import ssl

    cert, key, encrypted = encrypted_client_key
    mtls = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(cert)}
    with pytest.raises(ValueError, match="the key is encrypted; set KAFKA_SSL_KEY_PASSWORD"):
        _security(monkeypatch, **mtls, KAFKA_SSL_KEYFILE=str(encrypted))
    with pytest.raises(ValueError, match="or KAFKA_SSL_KEY_PASSWORD is not its passphrase") as refused:
        _security(monkeypatch, **mtls, KAFKA_SSL_KEYFILE=str(encrypted), KAFKA_SSL_KEY_PASSWORD="wrong")
    assert "wrong" not in str(refused.value)
    for keyfile, password in ((encrypted, "s3cret"), (encrypted, "s3cret\n"), (key, ""), (key, "unused in clear")):
        options = _security(monkeypatch, **mtls, KAFKA_SSL_KEYFILE=str(keyfile), KAFKA_SSL_KEY_PASSWORD=password)
        assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_a_key_password_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="KAFKA_SSL_KEY_PASSWORD set without KAFKA_SSL_KEYFILE"):
        _security(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEY_PASSWORD="s3cret")
