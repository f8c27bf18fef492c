"""SQLite plumbing shared by the embedded bus and store.

Both backends are shared by several OS processes (one per service), so every
connection runs in WAL mode (readers never block the writer), waits on a busy
lock instead of failing (``busy_timeout``), and writes inside ``BEGIN
IMMEDIATE`` transactions: taking the write lock up front avoids the deadlock
where two readers both try to upgrade to writers and one gets ``SQLITE_BUSY``
with no retry possible.  Writers queue on a lock file first (:func:`write_txn`).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
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


# How often a writer tries the writers' lock file while another holds it: quickly at first (most
# write transactions here take a few milliseconds), then every 2 ms.
_LOCK_TRIES_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002)


class _Connection(sqlite3.Connection):
    """A connection with a descriptor of its own on the database's writers' lock file."""

    writers_lock = -1
    busy_timeout_s = 30.0

    def close(self) -> None:
        super().close()
        if self.writers_lock >= 0:
            os.close(self.writers_lock)
            self.writers_lock = -1


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
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False, factory=_Connection
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.busy_timeout_s = busy_timeout_ms / 1000
    conn.writers_lock = os.open(f"{path}-writers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"{path}: could not switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    return conn


def _queue_for_writing(conn: sqlite3.Connection) -> int:
    """Take ``conn``'s writers' lock file (-1: it has none, or it was not free within the busy timeout).

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries for a taken
    write lock, so a process that finds it held for a millisecond may sleep for ten: with two
    processes committing in turn (two collector workers on one bus) each loses those sleeps and the
    tail grows (p99 365 ms measured).  An ``flock`` tried every 0.1-2 ms hands the lock over within
    about a millisecond, and ``BEGIN IMMEDIATE`` then finds SQLite's lock free.  A writer that does not
    take the file (the sqlite3 shell, an older release) is still waited for by ``busy_timeout``; past
    the busy timeout the file is not waited for any more and SQLite's own wait decides, as before.
    """
    fd = getattr(conn, "writers_lock", -1)
    if fd < 0:
        return -1
    deadline = time.monotonic() + getattr(conn, "busy_timeout_s", 30.0)
    tries = 0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return -1
            time.sleep(_LOCK_TRIES_S[min(tries, len(_LOCK_TRIES_S) - 1)])
            tries += 1


@contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One all-or-nothing write transaction holding the database's write lock from the start."""
    held = _queue_for_writing(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
    finally:
        if held >= 0:
            fcntl.flock(held, fcntl.LOCK_UN)


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot across several SELECTs (WAL readers see one point in time)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
