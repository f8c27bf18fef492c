"""Training loops for the neural models (torch), shared by the trainer and ``scalerec eval-dataset``.

Both neural models learn from *all prefixes*: every position of a user's
history predicts the next item, the way SASRec is trained.  Windows of
``max_len`` are cut from the end of each history so long histories contribute
all their events.  Early stopping watches NDCG@10 on the validation item
(leave-one-out) and the best checkpoint is kept.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torch.distributed as dist
from scalerec_metrics import evaluate_full_ranking
from torch.nn import functional as F

from scalerec_models import distributed as dd
from scalerec_models.checkpoint import Checkpoint, RunRandomness, TrainState
from scalerec_models.config import ModelConfig
from scalerec_models.data import FIRST_ITEM, LeaveOneOut, Sequences
from scalerec_models.networks import SeqRanker, TwoTower, unknown_dropout

log = logging.getLogger(__name__)

# One epoch of a run, as the model card keeps it (``training_history``): the mean training loss, NDCG@10
# on the validation item (None without a holdout) and the seconds since the run started.
EpochRecord = TypedDict("EpochRecord", {"epoch": int, "loss": float, "val_ndcg@10": float | None, "seconds": float})
# What a training run returns: the best epoch and its validation score, epochs run, and every epoch's record.
TrainInfo = TypedDict(
    "TrainInfo", {"best_epoch": float, "val_ndcg@10": float, "epochs_run": float, "history": list[EpochRecord]}
)


@dataclass
class Windows:
    """Left-padded training windows: inputs, next-item targets, target contexts and conversion labels."""

    inputs: np.ndarray  # [W, L] int64
    targets: np.ndarray  # [W, L] int64, 0 where no target
    contexts: np.ndarray  # [W, L, 4] context of the *target* event (the request it answers)
    conversions: np.ndarray  # [W, L] bool


def make_windows(seqs: Sequences, max_len: int) -> Windows:
    inputs, targets, contexts, convs = [], [], [], []
    for items, ctx, conv in zip(seqs.items, seqs.contexts, seqs.conversions, strict=True):
        n = len(items)
        end = n - 1  # number of (input, target) pairs
        while end > 0:
            start = max(0, end - max_len)
            pad = max_len - (end - start)
            inputs.append(np.r_[np.zeros(pad, np.int64), items[start:end]])
            targets.append(np.r_[np.zeros(pad, np.int64), items[start + 1 : end + 1]])
            contexts.append(np.r_[np.zeros((pad, 4), np.int64), ctx[start + 1 : end + 1]])
            convs.append(np.r_[np.zeros(pad, bool), conv[start + 1 : end + 1]])
            end = start
    if not inputs:
        raise ValueError("no training pairs: every user has fewer than 2 training events")
    return Windows(np.stack(inputs), np.stack(targets), np.stack(contexts), np.stack(convs))


def left_pad(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """[len(histories), length] with the most recent item last, truncated from the old end."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for r, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-length:]
        if len(h):
            out[r, length - len(h) :] = h
    return out


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python's, numpy's and torch's global generators; optionally ask torch for deterministic kernels.

    Batches are numpy index arrays drawn from the run's own seeded generator (no
    DataLoader, so no worker processes to seed); dropout and id dropout draw from torch's
    global generator seeded here, negatives and pair subsampling from their own seeded
    ``torch.Generator`` (all saved in checkpoints): with this, the same command on the same
    data trains the same model.  ``warn_only``: an op without a deterministic kernel warns instead of failing
    a training Job.  cuBLAS needs its workspace pinned for deterministic GEMMs on GPUs.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


ScoreModel = SeqRanker | TwoTower


@torch.no_grad()
def score_all(model: ScoreModel, histories: Sequence[np.ndarray], contexts: np.ndarray, length: int) -> np.ndarray:
    """Scores of every item for each history: [U, V] (pad and unknown columns are -inf)."""
    model.eval()
    items = model.all_items()
    device = items.device
    out = []
    for s in range(0, len(histories), 256):
        h = torch.from_numpy(left_pad(histories[s : s + 256], length)).to(device)
        c = torch.from_numpy(np.asarray(contexts[s : s + 256], dtype=np.int64)).to(device)
        state = model.user_states(h, c)[:, -1]
        sc = state @ items.T
        sc[:, :FIRST_ITEM] = -torch.inf
        out.append(sc.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, items.shape[0]), np.float32)


def evaluate_model(model: ScoreModel, split: LeaveOneOut, stage: str, length: int, k: int = 10) -> dict[str, float]:
    hist = split.histories(stage)
    scores = score_all(model, hist, split.contexts(stage), length)
    res = evaluate_full_ranking(
        lambda rows: scores[rows], np.arange(len(hist)), split.targets(stage), split.exclusions(stage), k=k
    )
    return res.as_dict()


def _optimizers(
    model: torch.nn.Module, cfg: ModelConfig
) -> tuple[list[torch.optim.Optimizer], list[torch.nn.Parameter]]:
    """SparseAdam for sparse embedding tables (only the rows a step used), fused AdamW for the rest."""
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    # fused: one kernel for all dense parameters instead of a Python loop per tensor (a big win on CPU).
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    return opts, dense


class _StepModule(torch.nn.Module):
    """``forward`` = one training step's loss, so DistributedDataParallel sees (and syncs) the whole step.

    The step functions call model methods (``user_states``, ``all_items``...), not
    ``forward``; wrapping the step makes DDP's forward hook run around all of them.
    """

    def __init__(self, model: torch.nn.Module, step: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._step = step

    def forward(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        return self._step(x, y, c, cv)


def autocast_for(device: torch.device, enabled: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no GradScaler needed: bf16 has fp32's range); a no-op on CPU, which stays fp32."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _shard(batches: list[np.ndarray], rank: int, world: int, device: torch.device) -> list[int]:
    """This rank's batch numbers: every ``world``-th, cut to the same count on every rank (DDP steps in lockstep)."""
    if world == 1:
        return list(range(len(batches)))
    per_rank = len(batches) // world
    if dist.is_available() and dist.is_initialized():
        # Ranks whose data differ slightly (a store that moved on between scans) must still take
        # the same number of steps, or DDP's all-reduce would wait forever for the missing ones.
        t = torch.tensor([per_rank], dtype=torch.int64, device=device)  # nccl reduces on the GPU
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        per_rank = int(t.item())
    if per_rank == 0:
        raise ValueError(f"{len(batches)} batches cannot feed {world} data-parallel processes")
    return list(range(rank, per_rank * world, world))


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch reports to an ``on_epoch`` callback (rank 0 only)."""

    model: str  # "ranker" or "two-tower"
    epoch: int
    epochs: int  # the most this run may take (early stopping and the time budget may end it sooner)
    loss: float  # mean training loss over the epoch
    val_ndcg: float | None  # validation NDCG@10; None when training without a holdout
    elapsed_s: float


#: Called once per epoch by the training loops; must be quick (it runs between epochs).
EpochCallback = Callable[[EpochReport], None]


@dataclass
class EpochResult:
    """What one finished epoch reports: the one record every consumer of progress reads."""

    epoch: int
    loss: float  # mean training loss per window
    val_ndcg: float | None  # validation NDCG@10 (None without a validation split)
    samples_per_s: float  # training windows per second over all ranks
    elapsed: float  # seconds of training so far, across restarts


class _EpochRunner:
    """One epoch of length-bucketed batches: shuffles, shards across ranks, steps the optimizers."""

    def __init__(
        self,
        runner: torch.nn.Module,
        windows: Windows,
        cfg: ModelConfig,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
        dense: Sequence[torch.nn.Parameter],
        rng: np.random.Generator,
        device: torch.device,
    ) -> None:
        self.runner, self.windows, self.cfg, self.rng, self.device = runner, windows, cfg, rng, device
        self.optimizers, self.schedulers, self.dense = optimizers, schedulers, dense
        self.lengths = (windows.inputs > 0).sum(1)
        self.amp = autocast_for(device, cfg.amp)

    def __call__(self) -> tuple[float, int]:
        """Train one epoch -> (mean loss, windows seen by this rank)."""
        self.runner.train()
        w, n, bs = self.windows, len(self.windows.inputs), self.cfg.batch_size
        # Batches of similar length, trimmed to their longest window: padding costs nothing.
        order = np.argsort(self.lengths + self.rng.uniform(0, 8, n), kind="stable")
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        perm = self.rng.permutation(len(batches))
        mine = set(_shard(batches, dd.rank(), dd.world_size(), self.device))
        total, seen = 0.0, 0
        for pos, bi in enumerate(perm):
            if pos not in mine:
                continue
            b = batches[bi]
            width = max(int(self.lengths[b].max()), 1)
            x, y, c, cv = (
                torch.from_numpy(a[b, -width:]).to(self.device, non_blocking=True)
                for a in (w.inputs, w.targets, w.contexts, w.conversions)
            )
            with self.amp:
                loss = self.runner(x, y, c, cv)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.dense, 5.0)
            for opt in self.optimizers:
                opt.step()
            for sched in self.schedulers:
                sched.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        return total / max(seen, 1), seen


def _schedulers(
    optimizers: Sequence[torch.optim.Optimizer], cfg: ModelConfig, epochs: int, steps_per_epoch: int
) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """``cosine``: the learning rate decays from ``lr`` to 0 over the run's fixed number of epochs."""
    if cfg.lr_schedule == "constant":
        return []
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; expected constant or cosine")
    total = max(epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]


def _end_epoch(state: TrainState, result: EpochResult, model: torch.nn.Module, cfg: ModelConfig) -> bool:
    """The one place an epoch ends: keep the best weights, count patience, apply the budget -> stop?"""
    state.epoch, state.elapsed = result.epoch, result.elapsed
    stop = False
    if result.val_ndcg is not None:
        if result.val_ndcg > state.best:
            state.best, state.best_epoch, state.bad = result.val_ndcg, result.epoch, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad += 1
        stop = state.bad >= cfg.patience
    # Optional wall-clock cap (the trainer service's TIME_BUDGET_S): results then depend on machine speed.
    return stop or (cfg.time_budget_s is not None and result.elapsed > cfg.time_budget_s)


def _log_epoch(name: str, result: EpochResult) -> None:
    val = "" if result.val_ndcg is None else f" val ndcg@10 {result.val_ndcg:.4f}"
    log.info(
        "%s epoch %d loss %.4f%s %.0f samples/s (%.0fs)",
        name,
        result.epoch,
        result.loss,
        val,
        result.samples_per_s,
        result.elapsed,
    )


def _progress_bar(progress: bool, epochs: int, first: int, name: str) -> Any:
    if not (progress and dd.is_main() and sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the trainer's dependencies
        return None
    return tqdm(total=epochs, initial=first - 1, desc=name, unit="epoch", file=sys.stderr)


def _train_loop(
    model: ScoreModel,
    windows: Windows,
    cfg: ModelConfig,
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[], float] | None,
    epochs: int,
    progress: bool,
    name: str,
    generators: Sequence[torch.Generator] = (),
    on_epoch: EpochCallback | None = None,
) -> TrainInfo:
    """Up to ``epochs`` epochs, early-stopped on validation NDCG@10, with checkpoints and optional DDP.

    Distributed (a process group of > 1): every rank draws the same batch
    permutation (same seed) and takes every ``world``-th batch, gradients are
    all-reduced by DDP, and rank 0's validation score and elapsed time are
    broadcast so every rank stops at the same epoch.  Single-process training
    follows exactly the path it always had.
    """
    device = dd.local_device(cfg.device)
    model.to(device)
    world = dd.world_size()
    opts, dense = _optimizers(model, cfg)
    steps_per_epoch = -(-len(windows.inputs) // cfg.batch_size) // world
    scheds = _schedulers(opts, cfg, epochs, steps_per_epoch)
    randomness = RunRandomness(np.random.default_rng(cfg.seed), generators)
    ckpt = Checkpoint.for_run(cfg, name, windows.targets, model)
    state = (ckpt.restore(model, opts, scheds, randomness) if ckpt else None) or TrainState()
    first = epochs + 1 if state.done else state.epoch + 1  # a finished run keeps its result, trains no further
    if dd.broadcast_object(first) != first:
        # A rank that cannot see rank 0's checkpoint would run a different number of epochs and hang the group.
        raise RuntimeError(f"rank {dd.rank()} resumes at epoch {first}, rank 0 elsewhere: all ranks must see {ckpt}")
    runner: torch.nn.Module = _StepModule(model, step_loss)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Broadcasts rank 0's weights at construction (warm starts and resumes agree); sparse embedding gradients
        # are all-reduced as sparse tensors (gloo); unused heads (e.g. conversion in the two-tower) allowed.
        runner = DDP(
            runner,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    run_epoch = _EpochRunner(runner, windows, cfg, opts, scheds, dense, randomness.rng, device)
    bar = _progress_bar(progress, epochs, first, name)
    t0 = time.perf_counter() - state.elapsed
    for epoch in range(first, epochs + 1):
        t_epoch = time.perf_counter()
        loss, seen = run_epoch()
        rate = seen * world / max(time.perf_counter() - t_epoch, 1e-9)
        score = validate() if validate is not None and dd.is_main() else None
        # Rank 0's numbers decide for everybody: identical early-stopping and time-budget decisions.
        score, elapsed = dd.broadcast_object((score, time.perf_counter() - t0))
        result = EpochResult(epoch, loss, score, rate, elapsed)
        stop = _end_epoch(state, result, model, cfg)
        state.done = stop or epoch == epochs
        state.history.append({"epoch": epoch, "loss": loss, "val_ndcg@10": score, "seconds": round(elapsed, 3)})
        if on_epoch is not None and dd.is_main():
            on_epoch(EpochReport(name, epoch, epochs, loss, score, elapsed))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(samples_s=f"{rate:.0f}", val=f"{max(state.best, 0):.4f}")
        elif progress and dd.is_main():
            _log_epoch(name, result)
        if ckpt and dd.is_main():
            ckpt.save(state, model, opts, scheds, randomness)
        if stop:
            break
    if bar is not None:
        bar.close()
    model.to("cpu")  # export, ONNX parity and serving all work on CPU copies
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return {
        "best_epoch": float(state.best_epoch or state.epoch),
        "val_ndcg@10": max(state.best, 0.0),
        "epochs_run": float(state.epoch),
        "history": [cast(EpochRecord, dict(r)) for r in state.history],
    }


def train_ranker(
    split_or_seqs: LeaveOneOut | Sequences,
    n_items: int,
    feature_table: np.ndarray,
    cfg: ModelConfig,
    progress: bool = False,
    init: SeqRanker | None = None,
    on_epoch: EpochCallback | None = None,
) -> tuple[SeqRanker, TrainInfo]:
    """Train the sequential ranker: full softmax (or sampled with ``cfg.negatives``) on every prefix.

    With a LeaveOneOut split, early-stops on validation NDCG@10; with plain
    sequences (production), runs ``cfg.epochs`` within ``cfg.time_budget_s``.
    """
    seed_everything(cfg.seed, cfg.deterministic)
    split = split_or_seqs if isinstance(split_or_seqs, LeaveOneOut) else None
    seqs = split.train if split else split_or_seqs
    windows = make_windows(seqs, cfg.max_len)  # type: ignore[arg-type]
    model = init if init is not None else SeqRanker(cfg, n_items, torch.from_numpy(feature_table))
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        states = model.user_states(unknown_dropout(x, cfg.id_dropout), c)
        keep = y >= FIRST_ITEM
        s, t, conv = states[keep], y[keep], cv[keep].float()
        # Full softmax materialises the whole catalogue once per step; sampled mode only what it needs.
        items = model.all_items() if cfg.negatives <= 0 else None
        if items is not None:
            # bf16 matmul (AMX/tensor cores where present) for the [positions x catalogue] product.  Pad and
            # unknown are never targets: their rows are left out of the product itself (slicing the logits
            # instead copies the biggest tensor of the step), and label smoothing spreads over real items only.
            logits = (s.to(torch.bfloat16) @ items[FIRST_ITEM:].to(torch.bfloat16).T).float()
            loss = F.cross_entropy(logits, t - FIRST_ITEM, label_smoothing=cfg.label_smoothing)
            pos = logits.gather(1, (t - FIRST_ITEM)[:, None]).squeeze(1)
        else:
            neg = torch.randint(FIRST_ITEM, n_items, (cfg.negatives,), generator=gen).to(t.device)
            pos = (s * model.item_vectors(t)).sum(-1)
            neg_logits = s @ model.item_vectors(neg).T
            neg_logits = neg_logits.masked_fill(neg[None, :] == t[:, None], -torch.inf)
            loss = F.cross_entropy(torch.cat([pos[:, None], neg_logits], 1), torch.zeros_like(t))
        # Auxiliary heads: calibrate p_click on a random negative; learn p_conversion.
        rnd = torch.randint(FIRST_ITEM, n_items, t.shape, generator=gen).to(t.device)
        e_rnd = model.item_vectors(rnd) if items is None else items[rnd]
        e_t = model.item_vectors(t) if items is None else items[t]
        neg_s = (s * e_rnd).sum(-1)
        click_logit = model.click_scale * torch.cat([pos, neg_s]).detach() + model.click_bias
        click_lbl = torch.cat([torch.ones_like(pos), torch.zeros_like(neg_s)])
        proj = model.conv_proj(s)
        conv_logit = torch.cat([(proj * e_t).sum(-1), (proj * e_rnd).sum(-1)]) + model.conv_bias
        conv_lbl = torch.cat([conv, torch.zeros_like(conv)])
        aux = F.binary_cross_entropy_with_logits(click_logit, click_lbl)
        aux = aux + F.binary_cross_entropy_with_logits(conv_logit, conv_lbl)
        return loss + 0.1 * aux

    validate = (lambda: evaluate_model(model, split, "val", cfg.max_len)["ndcg@10"]) if split else None
    info = _train_loop(
        model, windows, cfg, step, validate, cfg.epochs, progress, "ranker", generators=(gen,), on_epoch=on_epoch
    )
    return model, info


def train_two_tower(
    split_or_seqs: LeaveOneOut | Sequences,
    n_items: int,
    feature_table: np.ndarray,
    cfg: ModelConfig,
    progress: bool = False,
    init: TwoTower | None = None,
    max_pairs: int = 2048,
    uniform_negatives: int = 0,
    on_epoch: EpochCallback | None = None,
) -> tuple[TwoTower, TrainInfo]:
    """Train the two-tower model with sampled softmax: in-batch negatives with logQ correction.

    The other positives of the batch are negatives; since popular items are
    over-represented among them, the log of each candidate's expected count in
    the sample is subtracted from its logit (Yi et al., 2019).
    ``uniform_negatives`` > 0 mixes in a shared set of uniformly drawn items
    (Yang et al., 2020: mixed negative sampling) so tail items, rarely in a
    batch, are pushed away too; on MovieLens-small it did not help (test
    NDCG@10 0.028 vs 0.033 in one run each), so it is off by default.
    """
    seed_everything(cfg.seed, cfg.deterministic)
    split = split_or_seqs if isinstance(split_or_seqs, LeaveOneOut) else None
    seqs = split.train if split else split_or_seqs
    windows = make_windows(seqs, cfg.max_len)  # type: ignore[arg-type]
    model = init if init is not None else TwoTower(cfg, n_items, torch.from_numpy(feature_table))
    counts = np.bincount(windows.targets[windows.targets > 0], minlength=n_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n_uniform = min(uniform_negatives, max(n_items - FIRST_ITEM, 0))

    def step(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        states = model.user_states(unknown_dropout(x, cfg.id_dropout), c)
        keep = y > 0
        s, t = states[keep], y[keep]
        if len(t) > max_pairs:
            pick = torch.randperm(len(t), generator=gen)[:max_pairs].to(t.device)
            s, t = s[pick], t[pick]
        e = model.item_vectors(t, model.hist_features(t))
        # Expected number of times each candidate is in the sample: batch size * q(item) for in-batch ones.
        logits = s @ e.T - (log_q.to(t.device)[t] + math.log(len(t)))[None, :]
        same = t[:, None] == t[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(t), dtype=torch.bool, device=t.device), -torch.inf)
        if n_uniform:
            neg = torch.randint(FIRST_ITEM, n_items, (n_uniform,), generator=gen).to(t.device)
            un = s @ model.item_vectors(neg, model.hist_features(neg)).T - math.log(n_uniform / (n_items - FIRST_ITEM))
            un = un.masked_fill(neg[None, :] == t[:, None], -torch.inf)
            logits = torch.cat([logits, un], 1)
        return F.cross_entropy(logits.float(), torch.arange(len(t), device=t.device))

    tcfg = cfg.with_(epochs=cfg.tower_epochs, batch_size=cfg.tower_batch_size)
    validate = (lambda: evaluate_model(model, split, "val", cfg.max_len)["ndcg@10"]) if split else None
    info = _train_loop(
        model, windows, tcfg, step, validate, tcfg.epochs, progress, "two-tower", generators=(gen,), on_epoch=on_epoch
    )
    return model, info
