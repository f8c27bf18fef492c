"""SQLite plumbing shared by the embedded bus and store.

Both backends are shared by several OS processes (one per service), so every
connection runs in WAL mode (readers never block the writer), waits on a busy
lock instead of failing (``busy_timeout``), and writes inside ``BEGIN
IMMEDIATE`` transactions: taking the write lock up front avoids the deadlock
where two readers both try to upgrade to writers and one gets ``SQLITE_BUSY``
with no retry possible.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


def connect(path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit (transactions are explicit), usable from any thread.

    ``synchronous=FULL`` fsyncs the WAL on every commit, so an acknowledged write
    survives an OS crash; ``NORMAL`` survives a killed process (the write is in
    the WAL file before the commit returns) and only risks the last commits on
    power loss.
    """
    sync = synchronous.upper()
    if sync not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"{path}: could not switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={sync}")
    return conn


@contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One all-or-nothing write transaction holding the database's write lock from the start."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot across several SELECTs (WAL readers see one point in time)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
