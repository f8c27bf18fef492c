"""Certificates and keys made with openssl for the TLS tests (Debian's openssl; the stack makes its own the
same way): a self-signed pair, and a key encrypted with a passphrase."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """``<name>.crt`` (CN=name, a day long, its own CA) and its key in clear ``<name>.key``, in ``folder``."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    request = f"req -x509 -newkey rsa:2048 -nodes -subj /CN={name} -days 1".split()
    subprocess.run(["openssl", *request, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def encrypted_key(key: Path, out: Path, passphrase: str) -> Path:
    """``key`` encrypted (AES-256, PKCS#8) with ``passphrase``, written to ``out``."""
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", f"pass:{passphrase}", "-out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def swap_in(path: Path, source: Path) -> None:
    """``source``'s bytes under ``path`` as a new file (a new inode), as a Secret volume's update swaps them."""
    tmp = path.with_suffix(path.suffix + ".new")
    tmp.write_bytes(source.read_bytes())
    tmp.replace(path)
