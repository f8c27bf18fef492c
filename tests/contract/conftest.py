"""Fixtures ``bus``, ``store``, ``cache`` and ``scorer``, each parametrized over every registered backend.

The embedded backends come from ``contract_backends.py``.  Real servers are added
by ``real_backends.py`` in this folder, when it exists, through dictionaries
``REAL_BUS_BACKENDS``, ``REAL_STORE_BACKENDS``, ``REAL_CACHE_BACKENDS`` and
``REAL_SCORER_BACKENDS`` with the same factory shapes; their entries are merged
into the registries before the fixtures are parametrized.  The module is loaded
by path so this works whatever the import mode or package layout of ``tests/``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from contract_backends import (
    BUS_BACKENDS,
    CACHE_BACKENDS,
    SCORER_BACKENDS,
    STORE_BACKENDS,
    BusBackend,
    StoreBackend,
    write_tiny_model,
)
from scalerec_adapters.bus import EventBus
from scalerec_adapters.cache import Cache
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.store import WideColumnStore


def _load_real_backends() -> ModuleType | None:
    path = Path(__file__).with_name("real_backends.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("real_backends", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_backends"] = module
    spec.loader.exec_module(module)
    return module


_real = _load_real_backends()
if _real is not None:
    BUS_BACKENDS.update(getattr(_real, "REAL_BUS_BACKENDS", {}))
    STORE_BACKENDS.update(getattr(_real, "REAL_STORE_BACKENDS", {}))
    CACHE_BACKENDS.update(getattr(_real, "REAL_CACHE_BACKENDS", {}))
    SCORER_BACKENDS.update(getattr(_real, "REAL_SCORER_BACKENDS", {}))


async def _maybe_await(value: Any) -> Any:
    """Factories may be sync or async (a real backend may need to create a namespace or start a server)."""
    return await value if inspect.isawaitable(value) else value


# -- bus ---------------------------------------------------------------------------------------------


@pytest.fixture(params=list(BUS_BACKENDS))
async def bus_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusBackend]:
    """The test's isolated bus; ``await bus_backend.connect()`` opens another client on it (reopen/durability)."""
    backend: BusBackend = await _maybe_await(BUS_BACKENDS[request.param](tmp_path))
    yield backend
    for client in reversed(backend.clients):
        await client.close()


@pytest.fixture
async def bus(bus_backend: BusBackend) -> EventBus:
    return await bus_backend.connect()


# -- store -------------------------------------------------------------------------------------------


@pytest.fixture(params=list(STORE_BACKENDS))
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    backend = STORE_BACKENDS[request.param](tmp_path)
    yield backend
    for client in reversed(backend.clients):
        client.close()


@pytest.fixture
def store(store_backend: StoreBackend) -> WideColumnStore:
    return store_backend.connect()


# -- cache -------------------------------------------------------------------------------------------


@pytest.fixture(params=list(CACHE_BACKENDS))
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    client = CACHE_BACKENDS[request.param]()
    yield client
    client.close()


# -- scorer ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Triton layout: ``m/1`` (inline weights, scale 2) and ``m/2`` (external data, scale 3)."""
    repo = tmp_path_factory.mktemp("model_repository")
    write_tiny_model(repo / "m" / "1", scale=2.0, external_data=False)
    write_tiny_model(repo / "m" / "2", scale=3.0, external_data=True)
    assert (repo / "m" / "2" / "model.onnx.data").exists()
    return repo


@pytest.fixture(params=list(SCORER_BACKENDS))
async def scorer(request: pytest.FixtureRequest, model_repository: Path) -> AsyncIterator[Scorer]:
    client: Scorer = await _maybe_await(SCORER_BACKENDS[request.param](model_repository))
    yield client
    await client.close()
