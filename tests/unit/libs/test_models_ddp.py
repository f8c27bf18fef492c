"""Data-parallel training for real: two CPU processes, gloo backend, DistributedDataParallel.

Checks that gradients really were all-reduced (both ranks end with identical
weights), that both made the same early-stopping decision, and that the model
learned about as well as a single process did (and better than popularity).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scalerec_core.service import free_port
from scalerec_metrics import evaluate_full_ranking
from scalerec_models.baselines import Popularity
from scalerec_models.config import ModelConfig, model_config
from scalerec_models.data import Interactions, leave_one_out
from scalerec_models.pipeline import train_models

WORLD = 2


def _world(seed: int = 0) -> tuple[Interactions, dict[str, list[int]]]:
    """3 taste clusters of 12 items, 90 users with 8 events each (the neural test's shop)."""
    from scalerec_features import item_feature_vector

    cats = ("jazz", "metal", "opera")
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(90):
        cat = cats[u % 3]
        for k, i in enumerate(rng.choice(12, size=8, replace=False)):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"{cat}-{i}",
                    "ts_ms": 1_700_000_000_000 + (u * 100 + k) * 60_000,
                    "type": "purchase" if k % 3 == 0 else "click",
                    "context": [10, 2, 1, 5],
                }
            )
    feats = {
        f"{c}-{i}": item_feature_vector(c, 10.0 + n, title=f"{c} record {i}")
        for n, c in enumerate(cats)
        for i in range(12)
    }
    return Interactions.from_records(rows), feats


def _cfg() -> ModelConfig:
    return model_config(
        "demo",
        dim=16,
        max_len=10,
        history_len=10,
        epochs=12,
        patience=12,
        tower_epochs=6,
        tower_dim=16,
        batch_size=16,
        tower_batch_size=16,
        lr=1e-2,
        id_dropout=0.2,
        dropout=0.1,
        device="cpu",
    )


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data, feats = _world()
        trained = train_models(data, feats, _cfg(), progress=rank == 0)
        torch.save(
            {
                "ranker": trained.ranker.state_dict(),
                "two_tower": trained.two_tower.state_dict(),
                "metrics": trained.metrics,
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_one_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp_seconds = time.perf_counter() - started
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in ("ranker", "two_tower"):
        assert r0[name].keys() == r1[name].keys()
        for key, value in r0[name].items():
            # Identical to the bit: every step applied the same all-reduced gradient on both ranks.
            assert torch.equal(value, r1[name][key]), f"{name}.{key} differs between ranks"
    assert r0["metrics"]["ranker.best_epoch"] == r1["metrics"]["ranker.best_epoch"]

    data, feats = _world()
    started = time.perf_counter()
    single = train_models(data, feats, _cfg(), progress=False)
    single_seconds = time.perf_counter() - started
    split = leave_one_out(data, feats, vocab=single.vocab)
    pop = Popularity().fit(split.train.items, split.n_items)
    hist = split.histories("test")
    pop_scores = pop.score(hist)
    popularity = evaluate_full_ranking(
        lambda rows: pop_scores[rows], np.arange(len(hist)), split.targets("test"), split.exclusions("test")
    ).as_dict()["ndcg@10"]
    ddp, one = r0["metrics"]["ranker.ndcg@10"], single.metrics["ranker.ndcg@10"]
    print(
        f"ndcg@10 ddp {ddp:.4f} single {one:.4f} popularity {popularity:.4f}; {ddp_seconds:.1f}s vs {single_seconds:.1f}s"
    )
    assert ddp > popularity
    assert ddp >= 0.6 * one
