"""Per-epoch training checkpoints (torch): what a restarted Job needs to end exactly as an uninterrupted run.

A :class:`Checkpoint` is one file per model under ``ModelConfig.checkpoint_dir``
holding a :class:`TrainState` (epoch, best score and weights, patience
counter, time spent) plus the weights, optimizer and scheduler states and
every random generator of the run.  A fingerprint of the run (config,
training targets, parameter shapes) guards it: another run ignores the file
instead of resuming someone else's model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalerec_models.config import ModelConfig

log = logging.getLogger(__name__)

# Settings that do not change what a run computes: a resumed run may differ in them.
_NOT_FINGERPRINTED = ("checkpoint_dir", "device", "amp", "time_budget_s")


@dataclass
class TrainState:
    """Where a training run stands after an epoch: enough to decide early stopping and to resume."""

    epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0  # epochs since the best one (patience counter)
    elapsed: float = 0.0  # seconds of training so far, across restarts
    done: bool = False
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # One record per finished epoch (epoch, loss, val_ndcg@10, seconds): the model card's training curve.
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunRandomness:
    """Every random generator one training run draws from, saved and restored as one."""

    rng: np.random.Generator
    generators: Sequence[torch.Generator] = ()

    def state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "generators": [g.get_state() for g in self.generators],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        for g, st in zip(self.generators, state.get("generators", []), strict=False):
            g.set_state(st)


def checkpoint_path(cfg: ModelConfig, name: str) -> Path | None:
    return Path(cfg.checkpoint_dir) / f"{name}.ckpt.pt" if cfg.checkpoint_dir else None


def fingerprint(name: str, targets: np.ndarray, model: torch.nn.Module, cfg: ModelConfig) -> str:
    """Identifies a training run, so a checkpoint is only resumed by the same run (not tomorrow's Job)."""
    keep = {k: v for k, v in cfg.to_json().items() if k not in _NOT_FINGERPRINTED}
    h = hashlib.sha256(json.dumps([name, keep], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(targets).tobytes())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}".encode())
    return h.hexdigest()[:24]


class Checkpoint:
    """One model's checkpoint file; ``save`` after every epoch, ``restore`` once before the first."""

    def __init__(self, path: Path, fingerprint: str, name: str) -> None:
        self.path, self.fingerprint, self.name = path, fingerprint, name

    @classmethod
    def for_run(cls, cfg: ModelConfig, name: str, targets: np.ndarray, model: torch.nn.Module) -> Checkpoint | None:
        path = checkpoint_path(cfg, name)
        return cls(path, fingerprint(name, targets, model, cfg), name) if path else None

    def load(self) -> dict[str, Any] | None:
        """Tensors and plain data only (``weights_only``): unpickling a file may not run code from it.

        A checkpoint that holds anything else (or is corrupt) is ignored with a warning and the run
        starts over: refusing to start would wedge a Job that restarts on the same file.
        """
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            log.warning("ignoring checkpoint %s, it does not load as plain weights: %s", self.path, str(exc)[:300])
            return None
        if not isinstance(state, dict):
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info("%s ignores checkpoint %s: it belongs to another run", self.name, self.path)
            return None
        return state

    def restore(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
        randomness: RunRandomness,
    ) -> TrainState | None:
        """Load this run's last checkpoint into the model, optimizers and generators; None when there is none."""
        saved = self.load()
        if saved is None:
            return None
        model.load_state_dict(saved["model"])
        for opt, st in zip(optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(st)
        for sched, st in zip(schedulers, saved.get("schedulers", []), strict=False):
            sched.load_state_dict(st)
        randomness.restore(saved)
        state = TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__ if k in saved})
        log.info("%s resumes from %s after epoch %d (best %.4f)", self.name, self.path, state.epoch, state.best)
        return state

    def save(
        self,
        state: TrainState,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
        randomness: RunRandomness,
    ) -> None:
        """Write-then-rename, so a Job killed mid-write leaves the previous checkpoint intact."""
        payload = {f.name: getattr(state, f.name) for f in fields(state)} | randomness.state()
        payload |= {
            "fingerprint": self.fingerprint,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)
