"""Backend registries for the contract suites, and the helpers those suites share.

Every interface has one registry: name → factory that builds a fresh, isolated
backend for one test.  The embedded backends are listed here; the real servers
(Kafka, HBase, Memcached, Triton) are appended from ``real_backends.py`` when
that module exists (see ``conftest.py``), so adding a backend is one entry and
every contract test then runs against it too.

Isolation: embedded backends get a fresh temp file per test; server backends
should use a unique namespace / topic names / key prefix per test (tests already
use unique topic names and key prefixes, so a shared server is fine).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scalerec_adapters.bus import Consumer, EventBus, Message
from scalerec_adapters.cache import Cache
from scalerec_adapters.embedded.memory_cache import MemoryCache
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.store import WideColumnStore


@dataclass
class BusBackend:
    """One isolated bus for one test."""

    # A new, not yet started client on this test's bus; call it again to "reopen" (durability tests).
    open: Callable[[], EventBus]
    # The same bus as a factory URL, for child processes (``scalerec_adapters.factory.make_bus``).
    url: str
    # Opened clients, closed at teardown.
    clients: list[EventBus] = field(default_factory=list)

    async def connect(self) -> EventBus:
        bus = self.open()
        await bus.start()
        self.clients.append(bus)
        return bus


@dataclass
class StoreBackend:
    """One isolated store (fresh file / unique namespace) for one test."""

    open: Callable[[], WideColumnStore]
    clients: list[WideColumnStore] = field(default_factory=list)

    def connect(self) -> WideColumnStore:
        store = self.open()
        self.clients.append(store)
        return store


BusFactory = Callable[[Path], BusBackend | Awaitable[BusBackend]]
StoreFactory = Callable[[Path], StoreBackend]
CacheFactory = Callable[[], Cache]
# Given the model repository the test wrote, a scorer serving it.
ScorerFactory = Callable[[Path], Scorer | Awaitable[Scorer]]


def make_sqlite_bus(tmp: Path) -> BusBackend:
    path = tmp / "bus.db"
    return BusBackend(open=lambda: SqliteEventBus(path, default_partitions=4), url=f"sqlite://{path}")


def make_sqlite_store(tmp: Path) -> StoreBackend:
    path = tmp / "store.db"
    return StoreBackend(open=lambda: SqliteStore(path, namespace="contract"))


def make_memory_cache() -> Cache:
    return MemoryCache(max_items=10_000)


def make_onnx_scorer(repository: Path) -> Scorer:
    return OnnxRuntimeScorer(repository)


BUS_BACKENDS: dict[str, BusFactory] = {"sqlite": make_sqlite_bus}
STORE_BACKENDS: dict[str, StoreFactory] = {"sqlite": make_sqlite_store}
CACHE_BACKENDS: dict[str, CacheFactory] = {"memory": make_memory_cache}
SCORER_BACKENDS: dict[str, ScorerFactory] = {"onnxruntime": make_onnx_scorer}


# -- helpers shared by the suites ---------------------------------------------------------------------


def unique(name: str) -> str:
    """A name no other test (or earlier run against a shared server) uses."""
    return f"contract.{name}.{uuid.uuid4().hex[:10]}"


async def drain(consumer: Consumer, expected: int, timeout_s: float = 15.0) -> list[Message]:
    """Poll until ``expected`` messages arrived (or the timeout); returns what came, in arrival order."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += await consumer.getmany(timeout_ms=200, max_records=expected - len(got))
    return got


async def drain_all(consumers: list[Consumer], expected: int, timeout_s: float = 15.0) -> dict[int, list[Message]]:
    """Poll several members of a group in turn until together they returned ``expected`` messages."""
    got: dict[int, list[Message]] = {i: [] for i in range(len(consumers))}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
        for i, c in enumerate(consumers):
            got[i] += await c.getmany(timeout_ms=100, max_records=500)
    return got


async def quiet(consumer: Consumer, for_s: float = 0.3) -> list[Message]:
    """What a consumer receives in a short window (expected: nothing)."""
    await asyncio.sleep(0)
    return await consumer.getmany(timeout_ms=int(for_s * 1000))


FEATURES = 3
VOCAB = 1000


def write_tiny_model(directory: Path, *, scale: float, external_data: bool) -> None:
    """A tiny ranking-shaped model: ids int64 [-1, N] → scores float [-1, N] = ids * scale + 1, and row sums.

    The scores come from an embedding-style lookup table (Gather), the kind of tensor
    that ships as ONNX external data when it is large.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array((np.arange(VOCAB, dtype=np.float32) * scale + 1).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["scores"], axis=0),
            helper.make_node("ReduceSum", ["scores", "axes"], ["total"], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [-1, FEATURES])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [-1, FEATURES]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, [-1]),
        ],
        initializer=[table, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True)
    if external_data:
        # Only the table (4 kB) goes to model.onnx.data; shape-inference inputs such as ``axes`` stay inline.
        onnx.save_model(
            model,
            str(directory / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(directory / "model.onnx"))
