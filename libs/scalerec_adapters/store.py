"""Wide-column store interface (HBase's model): tables, column families, row-key-ordered scans.

Rows and columns are bytes; a column is ``b"family:qualifier"``.  Scans return
rows in unsigned byte order of their keys, which both backends guarantee, so row
key design (salt prefix, reversed timestamps) works the same on both.  The
interface is synchronous (happybase and sqlite3 are); async callers use
``asyncio.to_thread``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

Row = dict[bytes, bytes]


@dataclass(frozen=True)
class TableSpec:
    name: str
    families: tuple[str, ...]
    # Seconds after which a family's cells expire (None: never).
    ttl_seconds: Mapping[str, int] | None = None
    # Pre-split points (HBase regions); embedded backends may ignore them.
    split_keys: tuple[bytes, ...] = ()


class UnknownTableError(LookupError):
    """A table was used that ``ensure_tables`` never created (in this store's namespace)."""


def prefix_successor(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with ``prefix`` (None: no such key, scan to the end)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def as_bytes(value: object, what: str) -> bytes:
    """Keys and values are bytes on both backends; anything else is a caller bug, named here."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}: {value!r:.80}")


class StoreUnavailable(RuntimeError):
    """The store could not be reached; callers degrade (serve from cache, retry later)."""


class WideColumnStore(ABC):
    @abstractmethod
    def ensure_tables(self, specs: Sequence[TableSpec]) -> None: ...

    @abstractmethod
    def put(self, table: str, row: bytes, cells: Mapping[bytes, bytes]) -> None: ...

    @abstractmethod
    def put_many(self, table: str, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> None:
        """Batched puts (one round trip per batch)."""

    def put_tables(self, writes: Mapping[str, Iterable[tuple[bytes, Mapping[bytes, bytes]]]]) -> None:
        """Batched puts into several tables at once: what one consumer batch writes.

        The embedded store writes them all in one transaction; HBase sends each table's rows as
        batched mutations (``mutateRows``), a table's chunks concurrently.  Per row the result is
        the same as ``put_many`` per table, in the order of ``writes``: every row of a table is
        written before any row of the next one (a reader that sees a later table's row sees the
        earlier tables' rows too).  There is no atomicity across tables (HBase has none); every
        row is written when the call returns.
        """
        for table, rows in writes.items():
            self.put_many(table, rows)

    @abstractmethod
    def get(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> Row:
        """Cells of ``row`` (all, or the given columns / families); empty dict when absent."""

    @abstractmethod
    def get_many(self, table: str, rows: Sequence[bytes], columns: Sequence[bytes] | None = None) -> dict[bytes, Row]:
        """Present rows only."""

    @abstractmethod
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
        """Rows with start <= key < stop (or key starting with prefix) in key order, streamed in batches."""

    @abstractmethod
    def delete(self, table: str, row: bytes, columns: Sequence[bytes] | None = None) -> None: ...

    @abstractmethod
    def delete_many(self, table: str, rows: Iterable[bytes]) -> None: ...

    @abstractmethod
    def increment(self, table: str, row: bytes, column: bytes, amount: int = 1) -> int:
        """Atomic counter (8-byte big-endian, as HBase stores it); returns the new value."""

    def healthy(self) -> bool:
        return True

    @abstractmethod
    def close(self) -> None: ...


def decode_counter(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big", signed=True) if raw else 0
