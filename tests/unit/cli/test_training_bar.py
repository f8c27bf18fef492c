"""The demo's training bar follows the job's per-epoch progress, one bar per model."""

from __future__ import annotations

import io

from rich.console import Console
from scalerec_cli.demo import TrainingBar, _progress


def _epoch(model: str, epoch: int, loss: float, ndcg: float | None = 0.1) -> dict[str, object]:
    return {"model": model, "epoch": epoch, "max_epochs": 10, "loss": loss, "val_ndcg_at_10": ndcg, "elapsed_s": 1.0}


def test_one_bar_per_model_closed_where_training_stopped() -> None:
    out = io.StringIO()
    with _progress(Console(file=out, width=120, force_terminal=False)) as bar:
        training = TrainingBar(bar)
        training.update({"status": "running", "progress": []})
        assert not bar.tasks
        training.update({"status": "running", "progress": [_epoch("ranker", 1, 7.5), _epoch("ranker", 2, 6.9)]})
        (ranker,) = bar.tasks
        assert (ranker.completed, ranker.total) == (2, 10)
        assert "loss 6.9000" in ranker.description and "val NDCG@10 0.1000" in ranker.description
        progress = [_epoch("ranker", n, 6.0) for n in (1, 2, 3)] + [_epoch("two-tower", 1, 4.2, None)]
        training.update({"status": "running", "progress": progress})
        ranker, tower = bar.tasks
        assert (ranker.completed, ranker.total) == (3, 3)  # early-stopped at 3 of 10: shown as finished
        assert (tower.completed, tower.total) == (1, 10) and "NDCG" not in tower.description
        training.update({"status": "succeeded", "progress": [*progress, _epoch("two-tower", 2, 4.0, None)]})
        assert all(t.finished for t in bar.tasks)
    assert "two-tower" in out.getvalue()
