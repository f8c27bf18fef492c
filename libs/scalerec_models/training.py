"""Training loops for the neural models (torch), shared by the trainer and ``scalerec eval-dataset``.

Both neural models learn from *all prefixes*: every position of a user's
history predicts the next item, the way SASRec is trained.  Windows of
``max_len`` are cut from the end of each history so long histories contribute
all their events.  Early stopping watches NDCG@10 on the validation item
(leave-one-out) and the best checkpoint is kept.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scalerec_metrics import evaluate_full_ranking
from torch.nn import functional as F

from scalerec_models.config import ModelConfig
from scalerec_models.data import FIRST_ITEM, LeaveOneOut, Sequences
from scalerec_models.networks import BPR, SeqRanker, TwoTower, unknown_dropout

log = logging.getLogger(__name__)


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
    out = []
    for s in range(0, len(histories), 256):
        h = torch.from_numpy(left_pad(histories[s : s + 256], length))
        c = torch.from_numpy(np.asarray(contexts[s : s + 256], dtype=np.int64))
        state = model.user_states(h, c)[:, -1]
        sc = state @ items.T
        sc[:, :FIRST_ITEM] = -torch.inf
        out.append(sc.numpy())
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


def _train_loop(
    model: ScoreModel,
    windows: Windows,
    cfg: ModelConfig,
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[], float] | None,
    epochs: int,
    progress: bool,
    name: str,
) -> dict[str, float]:
    opts, dense = _optimizers(model, cfg)
    n = len(windows.inputs)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    epoch = 0
    lengths = (windows.inputs > 0).sum(1)
    for epoch in range(1, epochs + 1):
        model.train()
        # Batches of similar length, trimmed to their longest window: padding costs nothing.
        order = np.argsort(lengths + rng.uniform(0, 8, n), kind="stable")
        batches = [order[s : s + cfg.batch_size] for s in range(0, n, cfg.batch_size)]
        total = 0.0
        for bi in rng.permutation(len(batches)):
            b = batches[bi]
            width = max(int(lengths[b].max()), 1)
            x = torch.from_numpy(windows.inputs[b, -width:])
            y = torch.from_numpy(windows.targets[b, -width:])
            c = torch.from_numpy(windows.contexts[b, -width:])
            cv = torch.from_numpy(windows.conversions[b, -width:])
            loss = step_loss(x, y, c, cv)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense, 5.0)
            for opt in opts:
                opt.step()
            total += float(loss.detach()) * len(b)
        elapsed = time.perf_counter() - t0
        if validate is None:
            if progress:
                log.info("%s epoch %d loss %.4f (%.0fs)", name, epoch, total / n, elapsed)
            if elapsed > cfg.time_budget_s:
                break
            continue
        score = validate()
        if progress:
            log.info("%s epoch %d loss %.4f val ndcg@10 %.4f (%.0fs)", name, epoch, total / n, score, elapsed)
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
        if bad >= cfg.patience or elapsed > cfg.time_budget_s:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": float(best_epoch or epoch), "val_ndcg@10": max(best, 0.0), "epochs_run": float(epoch)}


def train_ranker(
    split_or_seqs: LeaveOneOut | Sequences,
    n_items: int,
    feature_table: np.ndarray,
    cfg: ModelConfig,
    progress: bool = False,
    init: SeqRanker | None = None,
) -> tuple[SeqRanker, dict[str, float]]:
    """Train the sequential ranker: full softmax (or sampled with ``cfg.negatives``) on every prefix.

    With a LeaveOneOut split, early-stops on validation NDCG@10; with plain
    sequences (production), runs ``cfg.epochs`` within ``cfg.time_budget_s``.
    """
    _seed(cfg.seed)
    split = split_or_seqs if isinstance(split_or_seqs, LeaveOneOut) else None
    seqs = split.train if split else split_or_seqs  # type: ignore[union-attr]
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
            neg = torch.randint(FIRST_ITEM, n_items, (cfg.negatives,), generator=gen)
            pos = (s * model.item_vectors(t)).sum(-1)
            neg_logits = s @ model.item_vectors(neg).T
            neg_logits = neg_logits.masked_fill(neg[None, :] == t[:, None], -torch.inf)
            loss = F.cross_entropy(torch.cat([pos[:, None], neg_logits], 1), torch.zeros_like(t))
        # Auxiliary heads: calibrate p_click on a random negative; learn p_conversion.
        rnd = torch.randint(FIRST_ITEM, n_items, t.shape, generator=gen)
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
    info = _train_loop(model, windows, cfg, step, validate, cfg.epochs, progress, "ranker")
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
) -> tuple[TwoTower, dict[str, float]]:
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
    seqs = split.train if split else split_or_seqs  # type: ignore[union-attr]
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
            pick = torch.randperm(len(t), generator=gen)[:max_pairs]
            s, t = s[pick], t[pick]
        e = model.item_vectors(t, model.hist_features(t))
        # Expected number of times each candidate is in the sample: batch size * q(item) for in-batch ones.
        logits = s @ e.T - (log_q[t] + math.log(len(t)))[None, :]
        same = t[:, None] == t[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(t), dtype=torch.bool), -torch.inf)
        if n_uniform:
            neg = torch.randint(FIRST_ITEM, n_items, (n_uniform,), generator=gen)
            un = s @ model.item_vectors(neg, model.hist_features(neg)).T - math.log(n_uniform / (n_items - FIRST_ITEM))
            un = un.masked_fill(neg[None, :] == t[:, None], -torch.inf)
            logits = torch.cat([logits, un], 1)
        return F.cross_entropy(logits, torch.arange(len(t)))

    tcfg = cfg.with_(epochs=cfg.tower_epochs, time_budget_s=cfg.tower_time_budget_s)
    validate = (lambda: evaluate_model(model, split, "val", cfg.max_len)["ndcg@10"]) if split else None
    info = _train_loop(model, windows, tcfg, step, validate, tcfg.epochs, progress, "two-tower")
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
