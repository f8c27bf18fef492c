"""ReloadingSSLContext: loads its files again when they are replaced, and only then; a pair caught half
written is refused without losing what was loaded. Against the real broker (a renewed client certificate
used for new connections): tests/integration/test_kafka_security_real.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from scalerec_core.tls import ReloadingSSLContext


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _replace(path: Path, source: Path) -> None:
    """As a Secret volume does: the new file swapped in under the same name (a new inode)."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pairs")
    return {name: _self_signed(folder, name) for name in ("a", "b")}


def test_files_are_loaded_again_only_when_they_change(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _replace(cert, pairs["a"][0])
    _replace(key, pairs["a"][1])
    context = ReloadingSSLContext.client(cafile=pairs["a"][0])
    context.use_certificate(cert, key)
    assert not context.reload_if_changed(), "nothing changed"
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname

    _replace(cert, pairs["b"][0])  # renewed: the certificate first, its key a moment later
    assert not context.reload_if_changed(), "b's certificate with a's key does not load"
    assert "do not load" in caplog.text and "keeping the ones loaded before" in caplog.text
    caplog.clear()
    assert not context.reload_if_changed(), "the same refused pair is not tried (nor logged) again"
    assert not caplog.text
    _replace(key, pairs["b"][1])
    assert context.reload_if_changed()
    assert not context.reload_if_changed()


def test_a_new_ca_bundle_is_trusted_from_the_next_look(tmp_path: Path, pairs: dict[str, tuple[Path, Path]]) -> None:
    bundle = tmp_path / "ca.crt"
    _replace(bundle, pairs["a"][0])
    context = ReloadingSSLContext.client(cafile=bundle)
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "a"),),)]
    bundle.write_bytes(pairs["a"][0].read_bytes() + pairs["b"][0].read_bytes())  # a CA added to the bundle
    assert context.reload_if_changed()
    assert {c["subject"][0][0][1] for c in context.get_ca_certs()} == {"a", "b"}
