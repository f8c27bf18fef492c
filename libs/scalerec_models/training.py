"""Training loops for the neural models (torch), shared by the trainer and ``scalerec eval-dataset``.

Both neural models learn from *all prefixes*: every position of a user's
history predicts the next item, the way SASRec is trained.  Windows of
``max_len`` are cut from the end of each history so long histories contribute
all their events.  Early stopping watches NDCG@10 on the validation item
(leave-one-out) and the best checkpoint is kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.distributed as dist
from scalerec_metrics import evaluate_full_ranking
from torch.nn import functional as F

from scalerec_models import distributed as dd
from scalerec_models.config import ModelConfig
from scalerec_models.data import FIRST_ITEM, LeaveOneOut, Sequences
from scalerec_models.networks import BPR, SeqRanker, TwoTower, unknown_dropout

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


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


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


def _fingerprint(name: str, windows: Windows, model: torch.nn.Module, cfg: ModelConfig) -> str:
    """Identifies a training run, so a checkpoint is only resumed by the same run (not tomorrow's Job)."""
    keep = {k: v for k, v in cfg.to_json().items() if k not in ("checkpoint_dir", "device", "amp")}
    keep = {k: v for k, v in keep.items() if "time_budget" not in k}
    h = hashlib.sha256(json.dumps([name, keep], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(windows.targets).tobytes())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}".encode())
    return h.hexdigest()[:24]


def checkpoint_path(cfg: ModelConfig, name: str) -> Path | None:
    return Path(cfg.checkpoint_dir) / f"{name}.ckpt.pt" if cfg.checkpoint_dir else None


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Tensors and plain data only (``weights_only``): unpickling a file may not run code from it.

    A checkpoint that holds anything else (or is corrupt) is ignored with a warning and the run
    starts over: refusing to start would wedge a Job that restarts on the same file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("ignoring checkpoint %s, it does not load as plain weights: %s", path, str(exc)[:300])
        return None
    return state if isinstance(state, dict) else None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write-then-rename, so a Job killed mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    """Epochs of length-bucketed batches, with early stopping, time budget, checkpoints and optional DDP.

    Distributed (a process group of > 1): every rank draws the same batch
    permutation (same seed) and takes every ``world``-th batch, gradients are
    all-reduced by DDP, and rank 0's validation score and elapsed time are
    broadcast so every rank stops at the same epoch.  Single-process training
    follows exactly the path it always had.
    """
    device = dd.local_device(cfg.device)
    model.to(device)
    world, rank = dd.world_size(), dd.rank()
    main = rank == 0
    opts, dense = _optimizers(model, cfg)
    amp = autocast_for(device, cfg.amp)
    n = len(windows.inputs)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history: list[EpochRecord] = []
    rng = np.random.default_rng(cfg.seed)
    first, last, spent = 1, 1, 0.0
    ckpt = checkpoint_path(cfg, name)
    fp = _fingerprint(name, windows, model, cfg) if ckpt else ""
    state = _load_checkpoint(ckpt) if ckpt and ckpt.exists() else None
    if ckpt and state is not None:
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            for opt, st in zip(opts, state["optimizers"], strict=True):
                opt.load_state_dict(st)
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            for g, st in zip(generators, state.get("generators", []), strict=False):
                g.set_state(st)
            best, best_epoch, bad, spent = state["best"], state["best_epoch"], state["bad"], state["elapsed"]
            best_state = state["best_state"]
            history = list(state.get("history", []))
            first = last = state["epoch"] + 1
            if main:
                log.info("%s resumes from %s after epoch %d (best %.4f)", name, ckpt, state["epoch"], best)
            if state.get("done"):
                first = epochs + 1  # finished before the restart: keep its result, train no further
                last = state["epoch"] + 1
        elif main:
            log.info("%s ignores checkpoint %s: it belongs to another run", name, ckpt)
    if dd.broadcast_object(first) != first:
        # A rank that cannot see rank 0's checkpoint would run a different number of epochs and hang the group.
        raise RuntimeError(f"rank {rank} resumes at epoch {first}, rank 0 elsewhere: all ranks must see {ckpt}")
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
    t0 = time.perf_counter() - spent
    epoch = last - 1
    lengths = (windows.inputs > 0).sum(1)
    bar = None
    if progress and main and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=epochs, initial=epoch, desc=name, unit="epoch", file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm ships with the trainer's dependencies
            bar = None
    stop = False
    for epoch in range(first, epochs + 1):
        model.train()
        # Batches of similar length, trimmed to their longest window: padding costs nothing.
        order = np.argsort(lengths + rng.uniform(0, 8, n), kind="stable")
        batches = [order[s : s + cfg.batch_size] for s in range(0, n, cfg.batch_size)]
        perm = rng.permutation(len(batches))
        mine = set(_shard(batches, rank, world, device))
        total, seen, t_epoch = 0.0, 0, time.perf_counter()
        for pos, bi in enumerate(perm):
            if pos not in mine:
                continue
            b = batches[bi]
            width = max(int(lengths[b].max()), 1)
            x = torch.from_numpy(windows.inputs[b, -width:]).to(device, non_blocking=True)
            y = torch.from_numpy(windows.targets[b, -width:]).to(device, non_blocking=True)
            c = torch.from_numpy(windows.contexts[b, -width:]).to(device, non_blocking=True)
            cv = torch.from_numpy(windows.conversions[b, -width:]).to(device, non_blocking=True)
            with amp:
                loss = runner(x, y, c, cv)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense, 5.0)
            for opt in opts:
                opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        rate = seen * world / max(time.perf_counter() - t_epoch, 1e-9)
        elapsed = time.perf_counter() - t0
        score = validate() if validate is not None and main else -1.0
        # Rank 0's numbers decide for everybody: identical early-stopping and time-budget decisions.
        score, elapsed = dd.broadcast_object((score, elapsed))
        history.append(
            {
                "epoch": epoch,
                "loss": total / max(seen, 1),
                "val_ndcg@10": score if validate is not None else None,
                "seconds": round(elapsed, 3),
            }
        )
        if validate is None:
            stop = elapsed > cfg.time_budget_s
            if progress and main and bar is None:
                log.info(
                    "%s epoch %d loss %.4f %.0f samples/s (%.0fs)", name, epoch, total / max(seen, 1), rate, elapsed
                )
        else:
            if progress and main and bar is None:
                log.info(
                    "%s epoch %d loss %.4f val ndcg@10 %.4f %.0f samples/s (%.0fs)",
                    name,
                    epoch,
                    total / max(seen, 1),
                    score,
                    rate,
                    elapsed,
                )
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            stop = bad >= cfg.patience or elapsed > cfg.time_budget_s
        if on_epoch is not None and main:
            on_epoch(
                EpochReport(name, epoch, epochs, total / max(seen, 1), score if validate is not None else None, elapsed)
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(samples_s=f"{rate:.0f}", val=f"{max(best, 0):.4f}")
        if ckpt and main:
            _save_checkpoint(
                ckpt,
                {
                    "fingerprint": fp,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizers": [opt.state_dict() for opt in opts],
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "generators": [g.get_state() for g in generators],
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad": bad,
                    "best_state": best_state,
                    "history": history,
                    "elapsed": elapsed,
                    "done": stop or epoch == epochs,
                },
            )
        if stop:
            break
    if bar is not None:
        bar.close()
    model.to("cpu")  # export, ONNX parity and serving all work on CPU copies
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "best_epoch": float(best_epoch or epoch),
        "val_ndcg@10": max(best, 0.0),
        "epochs_run": float(epoch),
        "history": history,
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
    _seed(cfg.seed)
    split = split_or_seqs if isinstance(split_or_seqs, LeaveOneOut) else None
    seqs = split.train if split else split_or_seqs
    windows = make_windows(seqs, cfg.max_len)  # type: ignore[arg-type]
    model = init if init is not None else SeqRanker(cfg, n_items, torch.from_numpy(feature_table))
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
        states = model.user_states(unknown_dropout(x, cfg.id_dropout), c)
        keep = y > 0
        s, t, conv = states[keep], y[keep], cv[keep].float()
        # Full softmax materialises the whole catalogue once per step; sampled mode only what it needs.
        items = model.all_items() if cfg.negatives <= 0 else None
        if items is not None:
            # bf16 matmul (AMX/tensor cores where present) for the [positions x catalogue] product.
            logits = (s.to(torch.bfloat16) @ items.to(torch.bfloat16).T).float()
            logits[:, :FIRST_ITEM] = -torch.inf
            loss = F.cross_entropy(logits, t)
            pos = logits.gather(1, t[:, None]).squeeze(1)
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
    _seed(cfg.seed)
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

    tcfg = cfg.with_(epochs=cfg.tower_epochs, time_budget_s=cfg.tower_time_budget_s)
    validate = (lambda: evaluate_model(model, split, "val", cfg.max_len)["ndcg@10"]) if split else None
    info = _train_loop(
        model, windows, tcfg, step, validate, tcfg.epochs, progress, "two-tower", generators=(gen,), on_epoch=on_epoch
    )
    return model, info


# ---------------------------------------------------------------- BPR baseline


class BPRModel:
    """BPR matrix factorisation; ``fit`` on per-user item lists, ``scores`` for some of those users."""

    def __init__(self, n_items: int, dim: int = 64, reg: float = 1e-4, lr: float = 5e-3, seed: int = 0) -> None:
        self.n_items, self.dim, self.reg, self.lr, self.seed = n_items, dim, reg, lr, seed
        self.net: BPR | None = None

    def fit(
        self,
        histories: Sequence[np.ndarray],
        epochs: int,
        validate: Callable[[BPRModel], float] | None = None,
        patience: int = 3,
        batch: int = 4096,
    ) -> tuple[int, float]:
        """Train; with ``validate``, stop when it stops improving and keep the best epoch.  -> (epochs, best)."""
        _seed(self.seed)
        users = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)]).astype(np.int64)
        items = np.concatenate(histories).astype(np.int64)
        self.net = BPR(len(histories), self.n_items, self.dim)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, fused=True)
        rng = np.random.default_rng(self.seed)
        best, best_state, best_epoch, bad = -1.0, None, epochs, 0
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(users))
            neg_all = rng.integers(FIRST_ITEM, self.n_items, len(users))
            for s in range(0, len(users), batch):
                b = order[s : s + batch]
                loss = self.net.loss(
                    torch.from_numpy(users[b]), torch.from_numpy(items[b]), torch.from_numpy(neg_all[b]), self.reg
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            if validate is not None:
                score = validate(self)
                if score > best:
                    best, best_state, best_epoch, bad = score, copy.deepcopy(self.net.state_dict()), epoch, 0
                else:
                    bad += 1
                    if bad >= patience:
                        break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return best_epoch, best

    @torch.no_grad()
    def scores(self, users: np.ndarray) -> np.ndarray:
        assert self.net is not None, "fit first"
        u = self.net.user(torch.from_numpy(np.asarray(users, dtype=np.int64)))
        sc = u @ self.net.item.weight.T + self.net.item_bias.weight.T
        sc[:, :FIRST_ITEM] = -math.inf
        return sc.numpy()
