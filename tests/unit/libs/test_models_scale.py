"""Training at scale, the parts that run on one CPU: checkpoints/resume, device choice, AMP, streaming build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scalerec_models import distributed as dd  # noqa: E402
from scalerec_models.checkpoint import Checkpoint  # noqa: E402
from scalerec_models.config import ModelConfig, model_config  # noqa: E402
from scalerec_models.data import Interactions, InteractionsBuilder, ItemVocab, leave_one_out  # noqa: E402
from scalerec_models.training import autocast_for, make_windows, train_ranker  # noqa: E402


def _rows(users: int = 40, per_user: int = 7, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for u in range(users):
        base = (u % 3) * 10
        for k in range(per_user):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{base + int(rng.integers(10))}",
                    "ts_ms": 1_700_000_000_000 + (u * 100 + k) * 60_000,
                    "type": ["click", "purchase", "rating"][k % 3],
                    "value": 4.5 if k % 3 == 2 else None,
                    "context": [k % 24, k % 7, 1, 3],
                }
            )
    return rows


def _cfg(tmp: Path | None = None, epochs: int = 4) -> ModelConfig:
    return model_config(
        "demo",
        dim=8,
        max_len=8,
        history_len=8,
        epochs=epochs,
        patience=50,
        batch_size=16,
        tower_batch_size=16,
        lr=1e-2,
        device="cpu",
        checkpoint_dir=str(tmp) if tmp else None,
    )


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    split = leave_one_out(Interactions.from_records(_rows()))
    feats = split.item_features
    # The reference: 4 epochs in one go.
    ref_model, ref = train_ranker(split, split.n_items, feats, _cfg())

    saved = Checkpoint.save
    calls = {"n": 0}

    def save_then_die(self: Checkpoint, *args: object) -> None:
        saved(self, *args)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("Job killed after epoch 2")

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_ranker(split, split.n_items, feats, _cfg(tmp_path))
    monkeypatch.setattr(Checkpoint, "save", saved)
    ckpt = torch.load(tmp_path / "ranker.ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and not ckpt["done"]

    model, info = train_ranker(split, split.n_items, feats, _cfg(tmp_path))
    assert info["epochs_run"] == 4.0  # epochs 3 and 4 ran after the restart
    assert info["best_epoch"] == ref["best_epoch"]
    assert info["val_ndcg@10"] == pytest.approx(ref["val_ndcg@10"], abs=1e-6)
    # The per-epoch history (the model card's training curve) survives the restart: epochs 1-2 come from
    # the checkpoint, 3-4 from the resumed run, and they match the uninterrupted run's.
    assert [h["epoch"] for h in ref["history"]] == [h["epoch"] for h in info["history"]] == [1, 2, 3, 4]
    for a, b in zip(ref["history"], info["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["loss"] > 0
        assert b["val_ndcg@10"] == pytest.approx(a["val_ndcg@10"], abs=1e-6)
    assert max(h["val_ndcg@10"] or 0.0 for h in info["history"]) == pytest.approx(info["val_ndcg@10"])
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    # Finished: a rerun trains no further and keeps the result.
    _, again = train_ranker(split, split.n_items, feats, _cfg(tmp_path))
    assert again["epochs_run"] == 4.0 and again["val_ndcg@10"] == pytest.approx(info["val_ndcg@10"])
    # Another run (other data) ignores the checkpoint instead of resuming someone else's model.
    other = leave_one_out(Interactions.from_records(_rows(seed=1)))
    _, fresh = train_ranker(other, other.n_items, other.item_features, _cfg(tmp_path, epochs=1))
    assert fresh["epochs_run"] == 1.0


def test_device_choice_and_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dd.resolve_device("cpu") == torch.device("cpu")
    assert dd.backend_for(torch.device("cpu")) == "gloo"
    assert dd.backend_for(torch.device("cuda")) == "nccl"
    assert not dd.is_distributed() and dd.world_size() == 1 and dd.is_main()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dd.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        dd.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dd.resolve_device("auto") == torch.device("cuda")
    assert dd.local_device("cuda:1") == torch.device("cuda", 1)
    # CPU stays fp32 (no autocast at all); CUDA gets bf16 autocast unless amp is off.
    assert not isinstance(autocast_for(torch.device("cpu")), torch.autocast)
    made: list[dict[str, object]] = []
    monkeypatch.setattr(torch, "autocast", lambda **kw: made.append(kw) or "autocast")  # no GPU to build one here
    assert autocast_for(torch.device("cuda")) == "autocast"
    assert made == [{"device_type": "cuda", "dtype": torch.bfloat16}]
    assert autocast_for(torch.device("cuda"), enabled=False) != "autocast"
    assert model_config("demo").device == "auto" and model_config("demo").checkpoint_dir is None


def test_streaming_builder_gives_the_same_model_inputs() -> None:
    rows = _rows()
    old = Interactions.from_records(rows)
    builder = InteractionsBuilder(chunk_rows=37)  # several chunks
    for r in rows:
        builder.add(r["user_id"], r["item_id"], r["ts_ms"], r["type"], r["value"], r["context"])  # type: ignore[arg-type]
    new = builder.build()
    assert len(new) == len(old) == len(builder)
    for name in ("user_id", "item_id", "type", "ts_ms", "context"):
        assert np.array_equal(getattr(new, name).astype(getattr(old, name).dtype), getattr(old, name)), name
    assert np.array_equal(new.value, old.value, equal_nan=True)
    assert np.array_equal(new.conversion(), old.conversion())
    vocab = ItemVocab(sorted(set(old.item_id)))
    a, b = leave_one_out(old, vocab=vocab), leave_one_out(new, vocab=vocab)
    wa, wb = make_windows(a.train, 8), make_windows(b.train, 8)
    for name in ("inputs", "targets", "contexts", "conversions"):
        x, y = getattr(wa, name), getattr(wb, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert np.array_equal(a.val_context, b.val_context) and np.array_equal(a.test_target, b.test_target)
    assert len(InteractionsBuilder().build()) == 0


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('ran')",))


def test_a_checkpoint_that_would_run_code_is_ignored_not_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    torch.save({"fingerprint": "x", "payload": _RunsCode()}, tmp_path / "ranker.ckpt.pt")
    split = leave_one_out(Interactions.from_records(_rows()))
    _, info = train_ranker(split, split.n_items, split.item_features, _cfg(tmp_path, epochs=1))
    assert not marker.exists()  # weights_only: the file's code never ran
    assert info["epochs_run"] == 1.0  # and training started over instead of wedging


def test_every_torch_load_in_the_code_is_weights_only() -> None:
    import re

    root = Path(__file__).resolve().parents[3]
    calls = []
    for folder in ("libs", "services", "cli", "scripts", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            for match in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", path.read_text()):
                calls.append((path.relative_to(root), match.group(0)))
    assert calls
    assert [c for c in calls if "weights_only=True" not in c[1]] == []
