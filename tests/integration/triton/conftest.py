"""A real tritonserver (from the nvidia-pytriton wheel) serving the example ranker and user tower.

The source repository is written fresh with ``write_model_version`` (the trainer's code
path) into a temporary folder; Triton serves a Python-backend mirror of it (this Triton
build has no onnxruntime backend) that runs the very same ``model.onnx`` bytes with
onnxruntime.  Servers run with ``--model-control-mode=explicit`` on free ports and are
always stopped, even when a test fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts" / "triton"))

import local_server  # noqa: E402 - scripts/triton is not a package
import make_example_model  # noqa: E402

# 5 ms: long enough that concurrent requests meet in the queue even on a loaded 2-core CI machine
# (production keeps the card's 0.5 ms), short enough not to slow the suite.
QUEUE_DELAY_US = 5000


@dataclass
class TritonFixture:
    """A running server plus the repositories behind it."""

    server: local_server.TritonServer
    source: Path  # onnxruntime-layout repository, as the trainer writes it
    served: Path  # Python-backend mirror Triton reads

    @property
    def url(self) -> str:
        return self.server.grpc_url

    def sync(self) -> None:
        """Mirror new versions / changed version policies of ``source`` into ``served``."""
        local_server.make_python_backend_repository(self.source, self.served, max_queue_delay_us=QUEUE_DELAY_US)


def _start(tmp: Path) -> Iterator[TritonFixture]:
    source = tmp / "model_repository"
    make_example_model.write_examples(source, seed=0)
    served = local_server.make_python_backend_repository(source, tmp / "served", max_queue_delay_us=QUEUE_DELAY_US)
    work = tmp / "work"
    work.mkdir()
    fixture = TritonFixture(
        server=local_server.start_triton_server(served, work_dir=work, model_control="explicit"),
        source=source,
        served=served,
    )
    try:
        yield fixture
    finally:
        local_server.stop_triton_server(fixture.server)  # a test may have restarted it


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonFixture]:
    """One server for the session: starting is cheap (~0.2 s) but each model load spawns a stub (~2 s)."""
    yield from _start(tmp_path_factory.mktemp("triton"))


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonFixture]:
    """A server of the test's own, for tests that stop it."""
    yield from _start(tmp_path)


def ranker_inputs(
    rng: np.random.Generator, batch: int, history: int = 20, candidates: int = 50
) -> dict[str, np.ndarray]:
    """Serving-contract inputs with ids across the full int64 range the hashing must handle."""
    return {
        "history": rng.integers(0, 2**62, (batch, history), dtype=np.int64),
        "context": rng.integers(0, 100, (batch, 4), dtype=np.int64),
        "candidates": rng.integers(0, 2**62, (batch, candidates), dtype=np.int64),
        "candidate_features": rng.integers(0, 10_000, (batch, candidates, 10), dtype=np.int64),
    }


@pytest.fixture
def make_inputs() -> object:
    """``make_inputs(rng, batch, history=20, candidates=50)`` -> ranker inputs."""
    return ranker_inputs
