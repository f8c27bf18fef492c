"""Model sizes and training settings (numpy-free, torch-free: the ranker reads this from config.json).

Sizes are configuration, not code: ``demo`` trains in seconds on a laptop,
``small`` is the offline-benchmark size, ``large`` is the production shape —
hashed item rows (index = 2 + hash(item_id) % buckets) in tables of tens of
millions of rows, exported with ONNX external data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from scalerec_features import HISTORY_LEN


@dataclass(frozen=True)
class ModelConfig:
    size: str = "small"
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    # Sequence length seen in training and offline evaluation; serving uses ``history_len``.
    max_len: int = 200
    history_len: int = HISTORY_LEN
    # Exact vocabulary when None; else hashed item rows (cold items still get content features).
    item_buckets: int | None = None
    use_content: bool = True
    use_context: bool = True
    # Share of training inputs whose item id is replaced by "unknown", so the model
    # learns to rank through content alone (cold start).
    id_dropout: float = 0.05
    # A fixed number of epochs, early-stopped on validation NDCG@10 (``patience`` epochs without a gain):
    # the same command on the same data trains the same model whatever the machine's speed or load.
    epochs: int = 15
    patience: int = 5
    batch_size: int = 64
    lr: float = 5e-3
    # "constant", or "cosine": decays to 0 over ``epochs`` (the fixed epoch count is the schedule's length).
    lr_schedule: str = "cosine"
    # Cross-entropy label smoothing of the ranker's next-item loss (0 = none).
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    # Negatives per training position: 0 = full softmax over every item (best on small
    # catalogues); otherwise a shared sampled softmax with logQ correction.
    negatives: int = 0
    # Optional wall-clock cap per model in seconds (the trainer service's TIME_BUDGET_S): training stops
    # after the epoch that passes it and keeps the best checkpoint.  Off by default, because a cap makes
    # the result depend on how fast and how busy the machine is.
    time_budget_s: float | None = None
    tower_dim: int = 64
    tower_epochs: int = 12
    # Windows per step of the two-tower (in-batch negatives: its batch is also its negative sample).
    tower_batch_size: int = 64
    bpr_dim: int = 64
    # Seeds python's, numpy's and torch's generators and every sampler of the run.
    seed: int = 0
    # torch.use_deterministic_algorithms (warn-only where an op has no deterministic kernel).
    deterministic: bool = True
    # "auto" = cuda when a GPU is visible, else cpu; or "cpu", "cuda", "cuda:1".
    device: str = "auto"
    # bf16 autocast around forward + loss on CUDA (ignored on CPU, where training stays fp32).
    amp: bool = True
    # Folder for per-epoch checkpoints (model + optimizer + epoch + best score); a rerun resumes from it.
    checkpoint_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(json.loads(Path(path).read_text()))

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


SIZES: dict[str, ModelConfig] = {
    "demo": ModelConfig(size="demo", dim=32, layers=1, heads=1, max_len=HISTORY_LEN, epochs=30, lr_schedule="constant"),
    # Batch 8 and 8 epochs: at a budget of about 5 minutes of training on 2 cores, more and smaller steps
    # win on validation (NDCG@10 at 8 epochs: batch 64 0.053, 32 0.058, 16 0.063, 8 0.069; docs/models.md).
    "small": ModelConfig(size="small", batch_size=8, epochs=8),
    "large": ModelConfig(
        size="large",
        dim=128,
        layers=4,
        heads=4,
        max_len=HISTORY_LEN,
        item_buckets=20_000_000,
        negatives=4096,
        batch_size=1024,
        tower_batch_size=1024,
        tower_dim=128,
        epochs=20,
        tower_epochs=20,
    ),
}


def model_config(size: str = "small", **overrides: Any) -> ModelConfig:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size].with_(**overrides)
