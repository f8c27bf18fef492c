"""The trainer at scale: streaming data load from the store, and ``torchrun --nproc_per_node=2`` for real."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_events.models import EventType, TrainingExample
from scalerec_features import context_vector
from scalerec_models import repository as repo
from scalerec_models.data import Interactions
from scalerec_storage import records as r
from scalerec_storage import schema as s
from scalerec_storage.windows import DataWindow, data_window
from scalerec_synthetic import ShopConfig, generate_shop
from scalerec_trainer.pipeline import load_training_data

from tests.unit.services.ingest import ingest_shop

ROOT = Path(__file__).resolve().parents[3]
TORCHRUN = Path(sys.executable).with_name("torchrun")


async def _ingest(data_dir: Path) -> None:
    await ingest_shop(data_dir, generate_shop(ShopConfig(users=120, items=80, events_per_user=15, seed=5)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trainer-scale")
    asyncio.run(_ingest(d))
    return d


def _old_load(store: SqliteStore, end_ms: int) -> Interactions:
    """The previous implementation: every example as a dict in one list, then ``from_records``."""
    records: list[dict[str, Any]] = [
        {
            "user_id": ex.user_id,
            "item_id": ex.item_id,
            "ts_ms": ex.ts_ms,
            "type": ex.type.value,
            "value": ex.value,
            "context": context_vector(ex.context),
        }
        for ex in r.scan_examples(store)
        if ex.ts_ms < end_ms
    ]
    return Interactions.from_records(records)


def _peak(fn: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_load_gives_the_same_rows(data_dir: Path) -> None:
    store = SqliteStore(data_dir / "store.db")
    try:
        window = data_window(store, 0.1)
        assert window is not None
        old = _old_load(store, window.end_ms)
        new, features = load_training_data(store, window)
    finally:
        store.close()
    assert len(new) == len(old) > 1000 and features
    for name in ("user_id", "item_id", "type", "ts_ms", "context"):
        assert np.array_equal(getattr(new, name).astype(getattr(old, name).dtype), getattr(old, name)), name
    assert np.array_equal(new.value, old.value, equal_nan=True)


def _example_store(path: Path, n: int) -> SqliteStore:
    """``n`` examples (200 users, 400 items, short histories) written straight into the examples table."""
    store = SqliteStore(path)
    store.ensure_tables(s.tables())
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        user, ts = f"user-{k % 200:04d}", 1_700_000_000_000 + k * 1000
        ex = TrainingExample(
            event_id=f"e{k}",
            user_id=user,
            item_id=f"item-{int(rng.integers(400)):05d}",
            type=EventType.CLICK,
            ts_ms=ts,
            history=[f"item-{int(i):05d}" for i in rng.integers(400, size=3)],
            context={"hour": 10, "weekday": 2, "device": 1, "locale": 3},
            item={"category": 1},
            label_click=1,
            label_conversion=0,
        )
        rows.append((s.example_key(user, ts, ex.event_id), r.example_cells(ex)))
    store.put_many(s.EXAMPLES, rows)
    return store


def test_streaming_load_memory_grows_with_int_arrays_not_dicts(tmp_path: Path) -> None:
    n = 20_000
    store = _example_store(tmp_path / "store.db", n)
    try:
        window = DataWindow(start_ms=0, end_ms=2**62, holdout_end_ms=2**62, examples=n)
        old, old_peak = _peak(lambda: _old_load(store, window.end_ms))
        (new, _), new_peak = _peak(lambda: load_training_data(store, window))
    finally:
        store.close()
    assert len(new) == len(old) == n
    print(
        f"\n{n} examples, tracemalloc peak: {old_peak / 2**20:.1f} MiB with a dict per example "
        f"({old_peak / n:.0f} B each), {new_peak / 2**20:.1f} MiB streaming ({new_peak / n:.0f} B each, "
        "of which the store's scan batch is a constant part)"
    )
    assert new_peak < 0.7 * old_peak


def test_torchrun_two_ranks_train_and_rank0_writes_once(data_dir: Path, tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    checkpoints = tmp_path / "checkpoints"
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "MODEL_REPOSITORY": str(repository),
        "MIN_EXAMPLES": "10",
        "MAX_EPOCHS": "3",
        "TIME_BUDGET_S": "20",
        "TRAIN_DEVICE": "cpu",
        "CHECKPOINT_DIR": str(checkpoints),
        "OMP_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "scalerec_trainer.train"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    seconds = time.perf_counter() - started
    logs = proc.stdout + proc.stderr
    print(f"\ntorchrun 2 ranks: {seconds:.1f}s")
    assert proc.returncode == 0, logs[-4000:]
    assert repo.list_versions(repository, repo.RANKER_MODEL) == [1], logs[-2000:]
    assert (repository / repo.USER_TOWER_MODEL / "1").is_dir()
    assert "samples/s" in logs and "joined process group: rank 1 of 2 (gloo)" in logs
    assert not list(checkpoints.glob("*.ckpt.pt"))  # cleaned up once the version was written


def test_a_trainer_restarted_after_a_crash_mid_version_trains_the_next_one(data_dir: Path, tmp_path: Path) -> None:
    """What a trainer SIGKILLed between the user tower and the ranker of version 1 leaves (the kill
    itself: tests/unit/libs/test_versions.py): the next Job cleans it up and writes version 2 of both
    models, where it used to fail on "version 1 already exists" for ever."""
    from scalerec_models.versions import HIGH_WATER_FILE

    repository = tmp_path / "model_repository"
    tower = repository / repo.USER_TOWER_MODEL / "1"
    tower.mkdir(parents=True)
    (tower / "model.onnx").write_bytes(b"half written")
    (repository / repo.RANKER_MODEL / ".staging-1-dead").mkdir(parents=True)
    (repository / HIGH_WATER_FILE).write_text("1\n")
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "MODEL_REPOSITORY": str(repository),
        "MIN_EXAMPLES": "10",
        "MAX_EPOCHS": "2",
        "TIME_BUDGET_S": "10",
        "TRAIN_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "scalerec_trainer.train"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    assert repo.list_versions(repository, repo.RANKER_MODEL) == [2], logs[-2000:]
    assert repo.list_versions(repository, repo.USER_TOWER_MODEL) == [2]
    assert "removed what an interrupted writer left" in logs
    assert repo.validate_repository(repository) == []
