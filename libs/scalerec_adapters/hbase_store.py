"""HBase through its Thrift1 server (happybase): the production :class:`WideColumnStore`.

Choices that matter to callers and operators:

* **Namespace.**  Thrift1 cannot create HBase namespaces, so a deployment's tables are named
  ``<namespace>_<table>`` in HBase's default namespace (happybase's ``table_prefix``).  Listing,
  creating and opening tables only ever sees this store's own prefix.
* **Pre-split regions.**  Thrift1's ``createTable`` takes no split keys.  ``TableSpec.split_keys``
  are therefore not applied here: HBase splits regions by size as tables grow, and an operator
  who wants regions from the first write creates the table beforehand in the HBase shell
  (``create '<ns>_<table>', 'f', SPLITS => [...]``); ``ensure_tables`` leaves an existing table
  as it is.  Row keys start with a salt (a hash bucket of the user or item id,
  ``scalerec_storage.schema.salt``), so writes spread as soon as regions split.
* **Batches are not transactions.**  ``put_many`` and ``put_tables`` send ``put_batch_size`` rows per
  round trip (``mutateRows``), a table's round trips at once on pooled connections, the tables of a
  ``put_tables`` one after the other; HBase makes each row atomic, not the batch.  Writers are idempotent (event ids), so a retried batch
  after a failure re-writes the same cells.
* **Failures.**  Any transport or server failure becomes :class:`StoreUnavailable` naming the
  operation, table and endpoint.  Row keys embed user ids, so messages and log lines name a row by
  its keyed hash (``scalerec_core.logging.key_ref``) and keep only the Java exception names of
  HBase's own message (its text quotes row keys and region start keys; the region server's log
  has it in full).  The pooled connection that saw it is dropped and a fresh one is
  opened on the next call, so the store recovers by itself when the Thrift server returns.
  Idempotent calls (everything but ``increment``) are retried once on a fresh connection first,
  because after a Thrift restart every pooled socket is stale and would otherwise fail once each.
* **Scans** are paged: each ``batch_size`` page is a short-lived scanner read to the end, so no
  server-side scanner or pooled connection is held while the caller works on the rows.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import happybase
from scalerec_core.logging import key_ref
from thriftpy2.thrift import TException
from thriftpy2.transport import TTransportException

from scalerec_adapters.store import (
    Row,
    StoreUnavailable,
    TableSpec,
    UnknownTableError,
    WideColumnStore,
    as_bytes,
    prefix_successor,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_T = TypeVar("_T")


def _server_message(exc: BaseException) -> str:
    return str(getattr(exc, "message", b"") or exc)


# What in HBase's messages names a row: a region name (<table>,<start key>,<id>.<hash>.), whose start key
# is a row key once regions split, and "row 'key'" / "row=key" / "rowkey: key" (a hash already there is kept).
_REGION_NAME = re.compile(r"([A-Za-z0-9_.\-]+,)(.+?)(,\d{9,}\.)")
_ROW_WORD = re.compile(r"\b(row(?:key)?(?:\s*[=:]\s*|\s+(?=['\"])))(['\"]?)([^'\"\s,]+)\2", re.IGNORECASE)


def _binary(row: bytes) -> str:
    """A row key as HBase prints it (Bytes.toStringBinary): printable ASCII as is, the rest as \\xHH."""
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in row)


def _server_summary(msg: str, rows: Iterable[bytes] = ()) -> str:
    """What of a server error may reach a log line or a caller: its first line, row keys as keyed hashes.

    HBase's text quotes row keys (``row 'b3|alice|...'``) and region names (which carry a region's
    first row key); the rest (the Java stack) says nothing the first line does not. The rows of the
    call are replaced wherever they appear, then anything shaped like a region name or a quoted row.
    """
    first = msg.strip().split("\n", 1)[0]
    for row in sorted(set(rows), key=len, reverse=True):
        if row:
            first = first.replace(_binary(row), key_ref(row)).replace(row.decode("utf-8", "replace"), key_ref(row))
    first = _REGION_NAME.sub(lambda m: m[1] + key_ref(m[2].encode("utf-8", "surrogateescape")) + m[3], first)
    first = _ROW_WORD.sub(
        lambda m: m[0] if m[3].startswith("k:") else m[1] + m[2] + key_ref(m[3].encode()) + m[2], first
    )
    return first[:400]


def _row(row: bytes | None) -> str:
    return "the first row" if row is None else f"row {key_ref(row)}"


class _TransportError(Exception):
    """Internal: the connection broke (not the request); the call may be retried on a new one."""


class _Pool:
    """A fixed number of happybase connections, opened lazily and replaced when one breaks.

    happybase's own pool re-opens a broken connection inside its ``except`` clause, which fails
    again while the server is down and hides the original error; this one just drops it.
    """

    def __init__(self, size: int, factory: Callable[[], happybase.Connection], acquire_timeout_s: float) -> None:
        self._factory = factory
        self._timeout = acquire_timeout_s
        self._slots: queue.LifoQueue[happybase.Connection | None] = queue.LifoQueue()
        for _ in range(size):
            self._slots.put(None)
        self._closed = False

    def run(self, fn: Callable[[happybase.Connection], _T]) -> _T:
        if self._closed:
            raise StoreUnavailable("HBase store is closed")
        try:
            conn = self._slots.get(timeout=self._timeout)
        except queue.Empty as exc:
            raise StoreUnavailable(f"no free HBase connection within {self._timeout:.0f}s (pool exhausted)") from exc
        try:
            if conn is None:
                conn = self._factory()
            if not conn.transport.is_open():
                conn.open()
            return fn(conn)
        except (TTransportException, OSError, EOFError) as exc:
            # The socket is in an unknown state (half a response may be unread): never reuse it.
            _close_quietly(conn)
            conn = None
            raise _TransportError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._slots.put(conn)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._slots.get_nowait()
            except queue.Empty:
                return
            _close_quietly(conn)


def _close_quietly(conn: happybase.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:
        log.debug("closing a broken HBase connection failed", exc_info=True)


class HBaseStore(WideColumnStore):
    """See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        namespace: str = "scalerec",
        pool_size: int = 8,
        *,
        timeout_ms: int = 15_000,
        put_batch_size: int = 1000,
    ) -> None:
        if not _NAME.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use letters, digits, '_', '.', '-'")
        self.host = host
        self.port = int(port)
        self.namespace = namespace
        self.put_batch_size = put_batch_size
        self._timeout_ms = timeout_ms
        self._pool = _Pool(
            max(1, int(pool_size)),
            lambda: happybase.Connection(
                self.host,
                self.port,
                timeout=timeout_ms,
                autoconnect=False,
                table_prefix=namespace,
                table_prefix_separator=b"_",
            ),
            acquire_timeout_s=timeout_ms / 1000,
        )
        # Families per table, cached once seen: validates columns client-side (HBase's own error for
        # a wrong family is an opaque server stack trace) and tells a missing table apart.
        self._families: dict[str, frozenset[bytes]] = {}
        self._families_lock = threading.Lock()
        # Sends the chunks of put_tables concurrently, one pooled connection each (made on first use).
        self._pool_size = max(1, int(pool_size))
        self._writers: ThreadPoolExecutor | None = None

    # -- plumbing --------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _call(
        self,
        what: str,
        fn: Callable[[happybase.Connection], _T],
        *,
        idempotent: bool = True,
        rows: Iterable[bytes] = (),
    ) -> _T:
        """Run ``fn`` on a pooled connection; transport failures become StoreUnavailable with context.

        ``rows``: the row keys of the call, hashed wherever the server's message quotes them.
        """
        attempts = 2 if idempotent else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._pool.run(fn)
            except _TransportError as exc:
                if attempt < attempts:
                    log.info("HBase %s: %s failed (%s); retrying on a fresh connection", self.endpoint, what, exc)
                    continue
                raise StoreUnavailable(f"HBase Thrift {self.endpoint}: {what} failed: {exc}") from exc
            except TimeoutError as exc:
                raise StoreUnavailable(f"HBase Thrift {self.endpoint}: {what} timed out: {exc}") from exc
            except TException as exc:
                # Server-side errors (Hbase.IOError, IllegalArgument): the request reached HBase.
                msg = _server_message(exc)
                if "TableNotFoundException" in msg:
                    raise UnknownTableError(self._missing(what)) from exc
                if "NoSuchColumnFamilyException" in msg:
                    raise ValueError(f"HBase {self.endpoint}: {what}: unknown column family") from None
                # `from None`: the chained TException would print the server's text with the traceback.
                raise StoreUnavailable(
                    f"HBase {self.endpoint}: {what} failed on the server: {_server_summary(msg, rows)}"
                ) from None
        raise AssertionError("unreachable")

    def _missing(self, table: str) -> str:
        return (
            f"table {table!r} does not exist in namespace {self.namespace!r} on HBase {self.endpoint}; "
            "create it with ensure_tables()"
        )

    def _table_families(self, table: str) -> frozenset[bytes]:
        fams = self._families.get(table)
        if fams is not None:
            return fams

        def run(conn: happybase.Connection) -> frozenset[bytes] | None:
            if table.encode() not in conn.tables():
                return None
            return frozenset(f.rstrip(b":") for f in conn.table(table).families())

        found = self._call(f"describe table {table!r}", run)
        if found is None:
            raise UnknownTableError(self._missing(table))
        with self._families_lock:
            self._families[table] = found
        return found

    def _check_cells(self, table: str, row: bytes, cells: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
        families = self._table_families(table)
        as_bytes(row, "row key")
        out: dict[bytes, bytes] = {}
        for col, value in cells.items():
            # Type checks in their cheap form first: this runs for every cell the preprocessor writes.
            if type(col) is not bytes:
                col = as_bytes(col, "column")
            end = col.find(b":")
            if end < 0 or col[:end] not in families:
                names = tuple(sorted(f.decode() for f in families))
                raise ValueError(f"table {table!r}: column {col!r} is not 'family:qualifier' with a family in {names}")
            out[col] = value if type(value) is bytes else as_bytes(value, f"value of {col!r}")
        return out

    @staticmethod
    def _columns(columns: Sequence[bytes] | None) -> list[bytes] | None:
        return [as_bytes(c, "column") for c in columns] if columns else None

    # -- tables ----------------------------------------------------------------------------------------

    def ensure_tables(self, specs: Sequence[TableSpec]) -> None:
        """Create the missing tables (one version per cell, TTL per family); existing ones are left alone."""
        for spec in specs:
            if not _NAME.match(spec.name):
                raise ValueError(f"table name {spec.name!r}: use letters, digits, '_', '.', '-'")
            for f in spec.families:
                if not f or ":" in f:
                    raise ValueError(f"table {spec.name!r}: bad family name {f!r}")

        def run(conn: happybase.Connection) -> None:
            existing = set(conn.tables())
            for spec in specs:
                if spec.name.encode() in existing:
                    continue
                ttl = spec.ttl_seconds or {}
                families: dict[str, dict[str, Any]] = {}
                for f in spec.families:
                    opts: dict[str, Any] = {"max_versions": 1}
                    if ttl.get(f):
                        opts["time_to_live"] = int(ttl[f])
                    families[f] = opts
                try:
                    conn.create_table(spec.name, families)
                except TException as exc:
                    # Another process created it between our listing and our create: that is fine.
                    if spec.name.encode() not in conn.tables():
                        raise
                    log.debug("table %s created concurrently: %s", spec.name, _server_message(exc))
                if spec.split_keys:
                    log.info(
                        "HBase table %s_%s created without its %d split keys (Thrift1 cannot pre-split); "
                        "see scalerec_adapters.hbase_store",
                        self.namespace,
                        spec.name,
                        len(spec.split_keys),
                    )

        self._call("ensure_tables", run)
        with self._families_lock:
            for spec in specs:
                self._families.pop(spec.name, None)  # re-read: an existing table keeps its own definition

    def drop_tables(self) -> None:
        """Delete every table of this namespace (tests and ``scalerec reset``); irreversible."""

        def run(conn: happybase.Connection) -> None:
            for name in conn.tables():
                conn.delete_table(name, disable=True)

        self._call("drop_tables", run)
        with self._families_lock:
            self._families.clear()

    # -- writes ----------------------------------------------------------------------------------------

    def put(self, table: str, row: bytes, cells: Mapping[bytes, bytes]) -> None:
        checked = self._check_cells(table, row, cells)
        if checked:
            self._call(f"put into {table!r} {_row(row)}", lambda c: c.table(table).put(row, checked), rows=(row,))

    def put_many(self, table: str, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> None:
        self.put_tables({table: rows})

    def put_tables(self, writes: Mapping[str, Iterable[tuple[bytes, Mapping[bytes, bytes]]]]) -> None:
        """Each table's rows in ``put_batch_size`` chunks of batched mutations (``mutateRows``), one table
        after the other in the order given, a table's chunks sent concurrently on pooled connections
        (one at a time, a consumer batch waited for every round trip in turn)."""
        step = max(1, self.put_batch_size)
        tables: list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]] = []
        for table, rows in writes.items():  # every cell checked before anything is written
            checked = [(bytes(r), self._check_cells(table, r, cells)) for r, cells in rows]
            tables.append((table, [(r, cells) for r, cells in checked if cells]))
        for table, rows in tables:
            chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
            if len(chunks) == 1:
                self._put_chunk(table, chunks[0])
                continue
            futures = [self._writer().submit(self._put_chunk, table, chunk) for chunk in chunks]
            # Every chunk finishes (or fails) before the next table or the caller goes on.
            errors = [f.exception() for f in futures]
            for error in errors:
                if error is not None:
                    raise error

    def _put_chunk(self, table: str, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        def run(conn: happybase.Connection) -> None:
            with conn.table(table).batch(batch_size=len(rows)) as batch:
                for r, cells in rows:
                    batch.put(r, cells)

        self._call(f"put_many into {table!r} ({len(rows)} rows)", run, rows=[r for r, _ in rows])

    def _writer(self) -> ThreadPoolExecutor:
        with self._families_lock:
            if self._writers is None:
                self._writers = ThreadPoolExecutor(self._pool_size, thread_name_prefix=f"hbase-{self.namespace}")
            return self._writers

    def increment(self, table: str, row: bytes, column: bytes, amount: int = 1) -> int:
        self._check_cells(table, row, {column: b""})
        # Not retried: a lost reply would make a retry count twice.
        return int(
            self._call(
                f"increment {table!r} {_row(row)} column {column!r}",
                lambda c: c.table(table).counter_inc(row, column, value=int(amount)),
                idempotent=False,
                rows=(row,),
            )
        )

    def delete(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> None:
        row = as_bytes(row, "row key")
        self._table_families(table)
        cols = self._columns(columns)
        self._call(
            f"delete from {table!r} {_row(row)}", lambda c: c.table(table).delete(row, columns=cols), rows=(row,)
        )

    def delete_many(self, table: str, rows: Iterable[bytes]) -> None:
        keys = [as_bytes(r, "row key") for r in rows]
        self._table_families(table)
        if not keys:
            return

        def run(conn: happybase.Connection) -> None:
            with conn.table(table).batch(batch_size=self.put_batch_size) as batch:
                for k in keys:
                    batch.delete(k)

        self._call(f"delete_many from {table!r} ({len(keys)} rows)", run, rows=keys)

    # -- reads -----------------------------------------------------------------------------------------

    def get(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> Row:
        row = as_bytes(row, "row key")
        self._table_families(table)
        cols = self._columns(columns)
        return dict(
            self._call(f"get from {table!r} {_row(row)}", lambda c: c.table(table).row(row, columns=cols), rows=(row,))
        )

    def get_many(self, table: str, rows: Sequence[bytes], columns: Sequence[bytes] | None = None) -> dict[bytes, Row]:
        keys = list(dict.fromkeys(as_bytes(r, "row key") for r in rows))
        self._table_families(table)
        if not keys:
            return {}
        cols = self._columns(columns)
        found = self._call(
            f"get_many from {table!r} ({len(keys)} rows)",
            lambda c: c.table(table).rows(keys, columns=cols),
            rows=keys,
        )
        return {k: dict(v) for k, v in found if v}

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
        """Pages of ``batch_size`` rows, each read by its own short scanner (see the module docstring)."""
        self._table_families(table)
        if prefix is not None:
            if start is not None or stop is not None:
                raise ValueError("scan: pass either prefix or start/stop, not both")
            start, stop = as_bytes(prefix, "prefix"), prefix_successor(prefix)
        cols = self._columns(columns)
        return self._scan_pages(table, start, stop, cols, limit, max(1, int(batch_size)))

    def _scan_pages(
        self,
        table: str,
        start: bytes | None,
        stop: bytes | None,
        cols: list[bytes] | None,
        limit: int | None,
        batch_size: int,
    ) -> Iterator[tuple[bytes, Row]]:
        remaining = limit
        lower = start
        while remaining is None or remaining > 0:
            n = batch_size if remaining is None else min(batch_size, remaining)

            def page(conn: happybase.Connection, lower: bytes | None = lower, n: int = n) -> list[tuple[bytes, Row]]:
                scanner = conn.table(table).scan(
                    row_start=lower, row_stop=stop, columns=cols, limit=n, batch_size=min(n, 1000)
                )
                return [(k, dict(v)) for k, v in scanner]

            rows = self._call(
                f"scan of {table!r} from {_row(lower)}", page, rows=[r for r in (lower, stop) if r is not None]
            )
            yield from rows
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < n:
                return
            lower = rows[-1][0] + b"\x00"  # the smallest key after the last one seen

    def healthy(self) -> bool:
        try:
            self._call("health check", lambda c: c.tables())
            return True
        except (StoreUnavailable, LookupError, ValueError):
            return False

    def close(self) -> None:
        with self._families_lock:
            writers, self._writers = self._writers, None
        if writers is not None:
            writers.shutdown(wait=True)
        self._pool.close()
