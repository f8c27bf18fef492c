"""ReloadingSSLContext: loads its files again when they are replaced, and only then; a pair caught half
written is refused without losing what was loaded. Against the real broker (a renewed client certificate
used for new connections): tests/integration/test_kafka_security_real.py."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from scalerec_core.tls import ReloadingSSLContext

from tests.tls_files import self_signed, swap_in


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pairs")
    return {name: self_signed(folder, name) for name in ("a", "b")}


def test_files_are_loaded_again_only_when_they_change(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    swap_in(cert, pairs["a"][0])
    swap_in(key, pairs["a"][1])
    context = ReloadingSSLContext.client(cafile=pairs["a"][0])
    context.use_certificate(cert, key)
    assert not context.reload_if_changed(), "nothing changed"
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname

    swap_in(cert, pairs["b"][0])  # renewed: the certificate first, its key a moment later
    assert not context.reload_if_changed(), "b's certificate with a's key does not load"
    assert "do not load" in caplog.text and "keeping the ones loaded before" in caplog.text
    caplog.clear()
    assert not context.reload_if_changed(), "the same refused pair is not tried (nor logged) again"
    assert not caplog.text
    swap_in(key, pairs["b"][1])
    assert context.reload_if_changed()
    assert not context.reload_if_changed()


def test_a_new_ca_bundle_is_trusted_from_the_next_look(tmp_path: Path, pairs: dict[str, tuple[Path, Path]]) -> None:
    bundle = tmp_path / "ca.crt"
    swap_in(bundle, pairs["a"][0])
    context = ReloadingSSLContext.client(cafile=bundle)
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "a"),),)]
    bundle.write_bytes(pairs["a"][0].read_bytes() + pairs["b"][0].read_bytes())  # a CA added to the bundle
    assert context.reload_if_changed()
    assert {c["subject"][0][0][1] for c in context.get_ca_certs()} == {"a", "b"}


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> dict[str, object]:
    """A TLS handshake in memory; the client certificate the server saw (its subject)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="server")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            break
    peer = s.getpeercert()
    assert peer is not None
    return peer


def test_a_refused_pair_leaves_the_certificate_loaded_before_in_use(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]]
) -> None:
    """OpenSSL's load_cert_chain installs a new certificate before it reads the key: loaded in place, a pair
    failing there left the context with no certificate at all, and a server that requires one refused it."""
    server_cert, server_key = self_signed(tmp_path, "server")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_cert, server_key)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=pairs["a"][0])
    server.load_verify_locations(cafile=pairs["b"][0])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    swap_in(cert, pairs["a"][0])
    swap_in(key, pairs["a"][1])
    client = ReloadingSSLContext.client(cafile=server_cert)
    client.check_hostname = False  # the test's server certificate names no host
    client.use_certificate(cert, key)

    def presented() -> str:
        subject = _handshake(client, server)["subject"]
        return str(subject[0][0][1])  # type: ignore[index]

    assert presented() == "a"
    swap_in(cert, pairs["b"][0])  # b's certificate, a's key: refused
    assert not client.reload_if_changed()
    assert presented() == "a"
    key.unlink()  # the key missing for a moment
    assert not client.reload_if_changed()
    assert presented() == "a"
    swap_in(key, pairs["b"][1])
    assert client.reload_if_changed()
    assert presented() == "b"


async def test_a_started_kafka_bus_looks_at_its_files_and_stops_looking_when_closed(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalerec_adapters.kafka_bus import KafkaEventBus

    bundle = tmp_path / "ca.crt"
    swap_in(bundle, pairs["a"][0])
    context = ReloadingSSLContext.client(cafile=bundle)
    looks: list[bool] = []
    real = context.reload_if_changed
    monkeypatch.setattr(context, "reload_if_changed", lambda: looks.append(real()) or looks[-1])
    bus = KafkaEventBus(
        "k:9093", 1, "t", client_options={"security_protocol": "SSL", "ssl_context": context}, tls_reload_s="0.02"
    )

    async def no_broker() -> None:
        return None

    monkeypatch.setattr(bus, "_live_producer", no_broker)
    await bus.start()
    await bus.start()  # twice: still one watch
    bundle.write_bytes(pairs["a"][0].read_bytes() + pairs["b"][0].read_bytes())
    await asyncio.sleep(0.2)
    assert True in looks and {c["subject"][0][0][1] for c in context.get_ca_certs()} == {"a", "b"}
    await bus.close()
    seen = len(looks)
    await asyncio.sleep(0.1)
    assert len(looks) == seen, "the watch ended with the bus"
