"""Embedded wide-column store: HBase's data model on one SQLite file.

Each store table is one SQLite table ``(row BLOB, col BLOB, value BLOB, ts_ms,
expires_ms)`` clustered on ``(row, col)`` (``WITHOUT ROWID``), so a row-key
range scan is a sequential walk of one B-tree in exactly the order HBase
returns rows: SQLite compares BLOBs with ``memcmp``, i.e. unsigned byte order,
shorter key first on a common prefix.  Table metadata (families, TTLs) lives in
``_store_tables`` so every process sharing the file sees the same tables.

TTL: a cell's expiry is computed at write time from its family's TTL; reads
filter expired cells out, and a throttled purge deletes them later (HBase also
drops them lazily, at compaction).

Thread-safety: each thread gets its own connection (WAL lets readers run while a
writer commits), services call in via ``asyncio.to_thread``; writes are
``BEGIN IMMEDIATE`` transactions, so ``put_many`` is all-or-nothing and
``increment`` is atomic across threads and processes.
"""

from __future__ import annotations

import json
import operator
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from scalerec_core.logging import key_ref

from scalerec_adapters.embedded._sqlite import connect, write_txn
from scalerec_adapters.store import (
    Row,
    StoreUnavailable,
    TableSpec,
    UnknownTableError,
    WideColumnStore,
    as_bytes,
    decode_counter,
    prefix_successor,
)

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_IN_CHUNK = 500  # stays well under SQLite's host-parameter limit
_PURGE_EVERY_S = 60.0
_T = TypeVar("_T")


def _column_filter(columns: Sequence[bytes] | None) -> tuple[str, list[bytes]]:
    """SQL condition for a columns argument: ``b"f"`` is the whole family, ``b"f:q"`` one column."""
    if not columns:
        return "", []
    parts: list[str] = []
    args: list[bytes] = []
    for c in columns:
        c = as_bytes(c, "column")
        if b":" in c:
            parts.append("col = ?")
            args.append(c)
        else:  # family: every column in [b"f:", b"f;")  (';' is ':' + 1)
            parts.append("(col >= ? AND col < ?)")
            args += [c + b":", c + b";"]
    return " AND (" + " OR ".join(parts) + ")", args


_ROW_COL = operator.itemgetter(0, 1)


class SqliteStore(WideColumnStore):
    """See the module docstring."""

    def __init__(
        self,
        path: Path,
        namespace: str = "scalerec",
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 30_000,
    ) -> None:
        if not _NAME.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use letters, digits, '_', '.', '-'")
        self.path = Path(path)
        self.namespace = namespace
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Every thread's connection with its thread, so close() closes them all and dead threads' are reclaimed.
        self._conns: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._specs: dict[str, TableSpec] = {}
        self._last_purge: dict[str, float] = {}
        self._closed = False
        conn = self._db()
        with write_txn(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _store_tables (namespace TEXT NOT NULL, name TEXT NOT NULL, "
                "families TEXT NOT NULL, ttl TEXT, PRIMARY KEY (namespace, name)) WITHOUT ROWID"
            )

    # -- plumbing --------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreUnavailable(f"store {self.path} is closed")
            try:
                conn = connect(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open store {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._conns_lock:
                live = []
                for thread_ref, other in self._conns:
                    thread = thread_ref()
                    if thread is not None and thread.is_alive():
                        live.append((thread_ref, other))
                    else:
                        other.close()  # its thread is gone (short-lived worker): nobody can use it again
                live.append((weakref.ref(threading.current_thread()), conn))
                self._conns = live
        return conn

    def _sql_table(self, table: str) -> str:
        return f'"t:{self.namespace}:{table}"'

    def _spec(self, table: str) -> TableSpec:
        spec = self._specs.get(table)
        if spec is None:
            # Another process may have created it since we last looked.
            row = (
                self._db()
                .execute(
                    "SELECT families, ttl FROM _store_tables WHERE namespace = ? AND name = ?", (self.namespace, table)
                )
                .fetchone()
            )
            if row is None:
                raise UnknownTableError(
                    f"table {table!r} does not exist in namespace {self.namespace!r} of {self.path}; "
                    "create it with ensure_tables()"
                )
            spec = TableSpec(table, tuple(json.loads(row[0])), json.loads(row[1]) if row[1] else None)
            self._specs[table] = spec
        return spec

    def _table_spec(self, table: str, what: str) -> TableSpec:
        return self._run(what, lambda _: self._spec(table))

    def _expiry(self, spec: TableSpec, now_ms: int) -> dict[bytes, int | None]:
        ttl = spec.ttl_seconds or {}
        return {f.encode(): (now_ms + int(ttl[f]) * 1000 if ttl.get(f) else None) for f in spec.families}

    def _cells(
        self,
        spec: TableSpec,
        row: bytes,
        cells: Mapping[bytes, bytes],
        now_ms: int,
        expiry: Mapping[bytes, int | None] | None = None,
    ) -> list[tuple[bytes, bytes, bytes, int, int | None]]:
        expiry = self._expiry(spec, now_ms) if expiry is None else expiry
        row = row if type(row) is bytes else as_bytes(row, "row key")
        out = []
        for col, value in cells.items():
            # Type checks in their cheap form first: this runs for every cell the preprocessor writes.
            if type(col) is not bytes:
                col = as_bytes(col, "column")
            if type(value) is not bytes:
                value = as_bytes(value, f"value of {col!r}")
            end = col.find(b":")
            if end < 0 or (family := col[:end]) not in expiry:
                raise ValueError(
                    f"table {spec.name!r}: column {col!r} is not 'family:qualifier' with a family in {spec.families}"
                )
            out.append((row, col, value, now_ms, expiry[family]))
        return out

    def _maybe_purge(self, table: str, conn: sqlite3.Connection, now_ms: int) -> None:
        """Delete expired cells at most once a minute per table (reads already hide them)."""
        spec = self._spec(table)
        if not spec.ttl_seconds or time.monotonic() - self._last_purge.get(table, 0.0) < _PURGE_EVERY_S:
            return
        self._last_purge[table] = time.monotonic()
        conn.execute(
            f"DELETE FROM {self._sql_table(table)} WHERE expires_ms IS NOT NULL AND expires_ms <= ?", (now_ms,)
        )

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return fn(self._db())
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, disk full, I/O error: the caller degrades or retries.
            raise StoreUnavailable(f"store {self.path}: {what} failed: {exc}") from exc

    # -- tables ----------------------------------------------------------------------------------------

    def ensure_tables(self, specs: Sequence[TableSpec]) -> None:
        for spec in specs:
            if not _NAME.match(spec.name):
                raise ValueError(f"table name {spec.name!r}: use letters, digits, '_', '.', '-'")
            for f in spec.families:
                if not f or ":" in f:
                    raise ValueError(f"table {spec.name!r}: bad family name {f!r}")

        def run(conn: sqlite3.Connection) -> None:
            with write_txn(conn):
                for spec in specs:
                    conn.execute(
                        "INSERT OR IGNORE INTO _store_tables(namespace, name, families, ttl) VALUES (?, ?, ?, ?)",
                        (
                            self.namespace,
                            spec.name,
                            json.dumps(list(spec.families)),
                            json.dumps(dict(spec.ttl_seconds)) if spec.ttl_seconds else None,
                        ),
                    )
                    t = self._sql_table(spec.name)
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {t} (row BLOB NOT NULL, col BLOB NOT NULL, value BLOB NOT NULL, "
                        "ts_ms INTEGER NOT NULL, expires_ms INTEGER, PRIMARY KEY (row, col)) WITHOUT ROWID"
                    )
                    idx = f'"i:{self.namespace}:{spec.name}:expires"'
                    conn.execute(f"CREATE INDEX IF NOT EXISTS {idx} ON {t}(expires_ms) WHERE expires_ms IS NOT NULL")
            for spec in specs:
                self._specs.pop(spec.name, None)  # re-read: an existing table keeps its stored definition

        self._run("ensure_tables", run)

    # -- writes ----------------------------------------------------------------------------------------

    def _upsert_sql(self, table: str) -> str:
        return (
            f"INSERT INTO {self._sql_table(table)}(row, col, value, ts_ms, expires_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(row, col) DO UPDATE SET value = excluded.value, ts_ms = excluded.ts_ms, "
            "expires_ms = excluded.expires_ms"
        )

    def put(self, table: str, row: bytes, cells: Mapping[bytes, bytes]) -> None:
        self.put_many(table, [(row, cells)])

    def put_many(self, table: str, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> None:
        """All rows in ONE transaction: either every cell is written or none (the preprocessor relies on it)."""
        self.put_tables({table: rows})

    def put_tables(self, writes: Mapping[str, Iterable[tuple[bytes, Mapping[bytes, bytes]]]]) -> None:
        """Every table's rows in ONE transaction (one commit, one WAL sync, for a whole consumer batch)."""
        now = int(time.time() * 1000)
        batches: list[tuple[str, list[tuple[bytes, bytes, bytes, int, int | None]]]] = []
        for table, rows in writes.items():
            spec = self._table_spec(table, "put_many")
            expiry = self._expiry(spec, now)  # once per table, not once per row
            cells = [c for row, row_cells in rows for c in self._cells(spec, row, row_cells, now, expiry)]
            if cells:
                # In key order: the B-tree is then written page by page instead of all over (salted keys
                # land everywhere), which makes both the inserts and the commit cheaper.
                cells.sort(key=_ROW_COL)  # stable: of two writes to one cell, the later still wins
                batches.append((table, cells))
        if not batches:
            return

        def run(conn: sqlite3.Connection) -> None:
            with write_txn(conn):
                for table, cells in batches:
                    conn.executemany(self._upsert_sql(table), cells)
                    self._maybe_purge(table, conn, now)

        self._run(f"put_many into {', '.join(repr(t) for t, _ in batches)}", run)

    def increment(self, table: str, row: bytes, column: bytes, amount: int = 1) -> int:
        spec = self._run("increment", lambda _: self._spec(table))
        now = int(time.time() * 1000)
        row = as_bytes(row, "row key")
        column = as_bytes(column, "column")

        def run(conn: sqlite3.Connection) -> int:
            # Read-modify-write under the database write lock: atomic across threads and processes.
            with write_txn(conn):
                current = conn.execute(
                    f"SELECT value FROM {self._sql_table(table)} WHERE row = ? AND col = ? "
                    "AND (expires_ms IS NULL OR expires_ms > ?)",
                    (row, column, now),
                ).fetchone()
                if current is not None and len(current[0]) != 8:
                    # HBase refuses too: the cell was not written by increment().
                    raise ValueError(
                        f"table {table!r} row {key_ref(row)} column {column!r} holds {len(current[0])} bytes, "
                        "not an 8-byte counter"
                    )
                new = (decode_counter(current[0]) if current else 0) + int(amount)
                (cell,) = self._cells(spec, row, {column: new.to_bytes(8, "big", signed=True)}, now)
                conn.execute(self._upsert_sql(table), cell)
                return new

        return int(self._run(f"increment {table!r} row {key_ref(row)} column {column!r}", run))

    def delete(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> None:
        row = as_bytes(row, "row key")

        def run(conn: sqlite3.Connection) -> None:
            self._spec(table)
            cond, args = _column_filter(columns)
            with write_txn(conn):
                conn.execute(f"DELETE FROM {self._sql_table(table)} WHERE row = ?{cond}", [row, *args])

        self._run(f"delete from {table!r}", run)

    def delete_many(self, table: str, rows: Iterable[bytes]) -> None:
        keys = [(as_bytes(r, "row key"),) for r in rows]

        def run(conn: sqlite3.Connection) -> None:
            self._spec(table)
            with write_txn(conn):
                conn.executemany(f"DELETE FROM {self._sql_table(table)} WHERE row = ?", keys)

        self._run(f"delete_many from {table!r}", run)

    # -- reads -----------------------------------------------------------------------------------------

    def get(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> Row:
        return self.get_many(table, [row], columns).get(as_bytes(row, "row key"), {})

    def get_many(self, table: str, rows: Sequence[bytes], columns: Sequence[bytes] | None = None) -> dict[bytes, Row]:
        keys = list(dict.fromkeys(as_bytes(r, "row key") for r in rows))
        cond, args = _column_filter(columns)

        def run(conn: sqlite3.Connection) -> dict[bytes, Row]:
            self._spec(table)
            now = int(time.time() * 1000)
            out: dict[bytes, Row] = {}
            for i in range(0, len(keys), _IN_CHUNK):
                chunk = keys[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for r, c, v in conn.execute(
                    f"SELECT row, col, value FROM {self._sql_table(table)} WHERE row IN ({marks}){cond} "
                    "AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY row, col",
                    [*chunk, *args, now],
                ):
                    out.setdefault(r, {})[c] = v
            return out

        return self._run(f"get from {table!r}", run)

    def scan(
        self,
        table: str,
        *,
        start: bytes | None = None,
        stop: bytes | None = None,
        prefix: bytes | None = None,
        columns: Sequence[bytes] | None = None,
        limit: int | None = None,
        batch_size: int = 1000,
    ) -> Iterator[tuple[bytes, Row]]:
        """Streams ``batch_size`` rows per query; no lock or transaction is held between batches."""
        self._run("scan", lambda _: self._spec(table))
        if prefix is not None:
            if start is not None or stop is not None:
                raise ValueError("scan: pass either prefix or start/stop, not both")
            start, stop = as_bytes(prefix, "prefix"), prefix_successor(prefix)
        cond, args = _column_filter(columns)
        t = self._sql_table(table)
        batch_size = max(1, int(batch_size))
        return self._scan_iter(t, table, start, stop, cond, args, limit, batch_size)

    def _scan_iter(
        self,
        t: str,
        table: str,
        start: bytes | None,
        stop: bytes | None,
        cond: str,
        args: list[bytes],
        limit: int | None,
        batch_size: int,
    ) -> Iterator[tuple[bytes, Row]]:
        remaining = limit
        lower, inclusive = (start if start is not None else b""), True
        live = " AND (expires_ms IS NULL OR expires_ms > ?)"
        while remaining is None or remaining > 0:
            n = batch_size if remaining is None else min(batch_size, remaining)
            now = int(time.time() * 1000)
            where = f"row {'>=' if inclusive else '>'} ?" + (" AND row < ?" if stop is not None else "")
            bounds = [lower] + ([stop] if stop is not None else [])

            def page(
                conn: sqlite3.Connection, where: str = where, bounds: list[bytes] = bounds, n: int = n, now: int = now
            ) -> tuple[list[bytes], list[Any]]:
                # Which rows (with at least one visible, matching cell) come next, then their cells.
                keys = [
                    r
                    for (r,) in conn.execute(
                        f"SELECT DISTINCT row FROM {t} WHERE {where}{cond}{live} ORDER BY row LIMIT ?",
                        [*bounds, *args, now, n],
                    )
                ]
                if not keys:
                    return keys, []
                cells = conn.execute(
                    f"SELECT row, col, value FROM {t} WHERE row >= ? AND row <= ?{cond}{live} ORDER BY row, col",
                    [keys[0], keys[-1], *args, now],
                ).fetchall()
                return keys, cells

            keys, cells = self._run(f"scan of {table!r}", page)
            if not keys:
                return
            rows: dict[bytes, Row] = {k: {} for k in keys}
            for r, c, v in cells:
                if r in rows:
                    rows[r][c] = v
            for k in keys:
                if rows[k]:  # a row whose cells all expired between the two queries is skipped
                    yield k, rows[k]
            if remaining is not None:
                remaining -= len(keys)
            if len(keys) < n:
                return
            lower, inclusive = keys[-1], False

    def healthy(self) -> bool:
        try:
            self._db().execute("SELECT 1").fetchone()
            return True
        except (sqlite3.Error, StoreUnavailable):
            return False

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for _, conn in conns:
            conn.close()
        self._local = threading.local()
