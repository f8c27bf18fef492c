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
# Pages the WAL may hold before a commit copies them back into the database (SQLite's default: 1,000).
# Hot pages (an item's counters, a busy user's rows, the B-tree's upper levels) are dirtied by almost
# every batch; at 1,000 (4 MB) the preprocessor's batches of 2,000 events checkpointed nearly every
# commit and copied those pages each time.  At 10,000 (a WAL of up to ~40 MB between checkpoints) the
# embedded events consumer measured 70.6-71.0 -> 67.3-68.5 µs CPU per event (benchmarks.md).
WAL_AUTOCHECKPOINT_PAGES = 10_000


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
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
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
