"""A client TLS context that follows its certificate files when they are replaced in place.

Kubernetes updates a mounted Secret's files when the Secret changes (cert-manager renews a client
certificate weeks before it expires), but an ``ssl.SSLContext`` keeps what it loaded at start: a service
that ran past the old certificate's end could no longer open a connection, although the new certificate
was on its disk. :class:`ReloadingSSLContext` remembers its files and :meth:`reload_if_changed` loads them
again into the same context when one of them changed, so every connection opened after that (aiokafka
opens them as it needs, reconnects included) presents the new certificate. Connections already open keep
the session they negotiated. New CAs in the bundle are trusted from then on; a CA removed from it stays
trusted until the process restarts (OpenSSL adds to a context's trust store, it never removes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PasswordCallback = Callable[[], str]


class ReloadingSSLContext(ssl.SSLContext):
    """``ssl.create_default_context(cafile=...)`` plus a client certificate, reloadable from its files."""

    cafile: Path | None
    certfile: Path | None
    keyfile: Path | None
    _password: PasswordCallback | None
    _loaded: tuple[tuple[int, int, int], ...] | None
    _refused: tuple[tuple[int, int, int], ...] | None

    @classmethod
    def client(cls, cafile: Path | None) -> ReloadingSSLContext:
        """Verify servers against ``cafile`` (the system's CAs without one), names checked, as
        ``ssl.create_default_context(cafile=...)`` does. Raises what ``load_verify_locations`` raises."""
        context = cls(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
        default = ssl.create_default_context()
        context.verify_flags = default.verify_flags  # newer Pythons' stricter chain checks, whatever this one's are
        if default.keylog_filename:  # SSLKEYLOGFILE, as create_default_context honours it
            context.keylog_filename = default.keylog_filename
        context.cafile, context.certfile, context.keyfile, context._password = cafile, None, None, None
        context._refused = None
        if cafile is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        context._loaded = context._signature()
        context._load()
        return context

    def use_certificate(self, certfile: Path, keyfile: Path, password: PasswordCallback | None = None) -> None:
        """Present this client certificate (mutual TLS), from now on and after every change of its files.
        Raises what ``load_cert_chain`` raises (the password callback's own errors included)."""
        self.certfile, self.keyfile, self._password = certfile, keyfile, password
        self._loaded = self._signature()
        self._load()

    def _files(self) -> list[Path]:
        return [p for p in (self.cafile, self.certfile, self.keyfile) if p is not None]

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        """What identifies the files' contents cheaply: inode, size and mtime of each, symlinks followed (a
        Secret volume swaps a ``..data`` link, so the path stays and the inode changes)."""
        out = []
        for path in self._files():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1, -1))
        return tuple(out)

    def _load(self) -> None:
        """The files, read once, into a throwaway context and only then into this one. ``load_cert_chain`` is
        not all-or-nothing: OpenSSL installs the new certificate, drops the key that does not match it, then
        reads the new key; a pair failing half way there would leave this context presenting no certificate at
        all (a broker that requires one refuses every new connection). Both loads read the same bytes."""
        ca = self.cafile.read_text() if self.cafile is not None else None
        pair = None
        if self.certfile is not None and self.keyfile is not None:
            pair = (self.certfile, self.keyfile)
        with _snapshot(pair) as paths:
            for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self):
                if ca is not None:
                    target.load_verify_locations(cadata=ca)
                if paths is not None:
                    target.load_cert_chain(paths[0], paths[1], password=self._password)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since they were last loaded; True when it did. A set of files
        that does not load (a certificate and a key from two renewals, caught between two writes) is logged
        once and tried again when the files change again; the context keeps what it had."""
        signature = self._signature()
        if signature in (self._loaded, self._refused):
            return False
        try:
            self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._refused = signature
            log.warning("TLS files %s changed but do not load (%s): keeping the ones loaded before", self._names(), exc)
            return False
        self._loaded, self._refused = signature, None
        log.info("TLS files %s changed: loaded again; new connections use them", self._names())
        return True

    def _names(self) -> str:
        return ", ".join(str(p) for p in self._files())


@contextlib.contextmanager
def _snapshot(pair: tuple[Path, Path] | None) -> Iterator[tuple[str, str] | None]:
    """The certificate and key files' bytes as they are now, in anonymous memory files (never on a disk) that
    OpenSSL can open by path; where there are none (not Linux), the files themselves."""
    if pair is None or not hasattr(os, "memfd_create"):
        yield None if pair is None else (str(pair[0]), str(pair[1]))
        return
    fds: list[int] = []
    try:
        for path in pair:
            data = memoryview(path.read_bytes())
            fd = os.memfd_create("scalerec-tls")
            fds.append(fd)
            while data:
                data = data[os.write(fd, data) :]
        yield (f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
