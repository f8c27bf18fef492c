"""The neural networks (torch): item encoder, causal sequence encoder, ranker, two-tower.

Imported only by the trainer and ``scalerec eval-dataset``; serving runs the
exported ONNX files (see :mod:`scalerec_models.bundle`).
"""

from __future__ import annotations

import torch
from scalerec_features import CONTEXT_CARDINALITIES, ITEM_FEATURE_CARDINALITIES, TEXT_TOKENS
from torch import nn

from scalerec_models.config import ModelConfig
from scalerec_models.data import UNKNOWN


class ItemEncoder(nn.Module):
    """Item vector = id embedding + content (category, price bucket, mean of text tokens).

    Content is what lets a brand-new item (index 1, "unknown") be ranked: its id
    row is shared, its content rows are learned from the items like it.
    """

    def __init__(self, n_items: int, dim: int, use_content: bool = True) -> None:
        super().__init__()
        self.use_content = use_content
        # Sparse gradients: a step touches only the rows it used, and the optimiser (SparseAdam)
        # updates only those — the difference between feasible and not for tables of 20M rows.
        self.id = nn.Embedding(n_items, dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.id.weight, std=0.02)
        if use_content:
            self.category = nn.Embedding(ITEM_FEATURE_CARDINALITIES[0], dim, padding_idx=0, sparse=True)
            self.price = nn.Embedding(ITEM_FEATURE_CARDINALITIES[1], dim, padding_idx=0, sparse=True)
            self.token = nn.Embedding(ITEM_FEATURE_CARDINALITIES[2], dim, padding_idx=0, sparse=True)
            for emb in (self.category, self.price, self.token):
                nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.id.weight[0].zero_()

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """ids [...], feats [..., 10] -> [..., dim]; padding (id 0) gives zeros."""
        x = self.id(ids)
        if self.use_content:
            tokens = feats[..., 2 : 2 + TEXT_TOKENS]
            n_tok = (tokens > 0).sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
            x = x + self.category(feats[..., 0]) + self.price(feats[..., 1]) + self.token(tokens).sum(-2) / n_tok
            x = x * (ids > 0).unsqueeze(-1).to(x.dtype)
        return x


class ContextEncoder(nn.Module):
    """[hour, weekday, device, locale] -> one vector (sum of four small embeddings)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embeddings = [nn.Embedding(c, dim) for c in CONTEXT_CARDINALITIES]
        self.tables = nn.ModuleList(self.embeddings)
        for t in self.embeddings:
            nn.init.normal_(t.weight, std=0.02)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        ctx = torch.stack([context[..., i].clamp(0, t.num_embeddings - 1) for i, t in enumerate(self.embeddings)], -1)
        return sum((t(ctx[..., i]) for i, t in enumerate(self.tables)), torch.zeros(()))


class SequenceEncoder(nn.Module):
    """Causal (SASRec-style) transformer over a left-padded history; state at t summarises items <= t.

    Positions are learned and counted from the *end* of the window, so a model
    trained on 200-long windows serves 50-long ones with the same meaning for
    "most recent".
    """

    def __init__(self, cfg: ModelConfig, items: ItemEncoder) -> None:
        super().__init__()
        self.items = items
        self.max_len = max(cfg.max_len, cfg.history_len)
        self.pos = nn.Embedding(self.max_len, cfg.dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.heads,
            dim_feedforward=cfg.dim * 2,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dim = cfg.dim

    def forward(self, history: torch.Tensor, hist_feats: torch.Tensor) -> torch.Tensor:
        """history [B, L] (0 = pad, left-padded) -> states [B, L, dim]."""
        length = history.shape[1]
        x = self.items(history, hist_feats) * (self.dim**0.5)
        x = x + self.pos.weight[self.max_len - length :].unsqueeze(0)
        x = self.drop(x)
        h = self.layers(x, mask=self.attention_mask(history, x.dtype))
        return self.norm(h)

    def attention_mask(self, history: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B * heads, L, L] additive mask: causal, padding keys hidden, each position sees itself."""
        length = history.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=history.device), diagonal=1)
        # A fully padded prefix would attend to nothing (NaN); let every position see itself.
        key_bias = (history == 0).unsqueeze(1).to(dtype) * -1e9
        eye = torch.eye(length, dtype=torch.bool, device=history.device).unsqueeze(0)
        mask = (causal.unsqueeze(0) + key_bias).masked_fill(eye, 0.0)
        return mask.repeat_interleave(self.layers.layers[0].self_attn.num_heads, 0)


class SeqRanker(nn.Module):
    """Sequential ranking model with click and conversion heads (the ``scalerec_ranker`` ONNX model).

    score(user, item) = <state_t + context, item vector>: the same item encoder
    embeds history and candidates (weight tying), which is what makes a full
    softmax over the catalogue cheap and lets content carry cold items.
    """

    feature_table: torch.Tensor  # a registered buffer; declared so type checkers know it is a tensor

    def __init__(self, cfg: ModelConfig, n_items: int, feature_table: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("feature_table", feature_table.long(), persistent=True)
        self.item_encoder = ItemEncoder(n_items, cfg.dim, cfg.use_content)
        self.encoder = SequenceEncoder(cfg, self.item_encoder)
        self.context = ContextEncoder(cfg.dim) if cfg.use_context else None
        self.conv_proj = nn.Linear(cfg.dim, cfg.dim)
        # p_click = sigmoid(a * score + b): a calibration of the ranking score, fit on sampled negatives.
        self.click_scale = nn.Parameter(torch.tensor(1.0))
        self.click_bias = nn.Parameter(torch.tensor(0.0))
        self.conv_bias = nn.Parameter(torch.tensor(0.0))

    def hist_features(self, history: torch.Tensor) -> torch.Tensor:
        idx = history.clamp(max=self.feature_table.shape[0] - 1)
        feats = self.feature_table[idx]
        return feats * (history < self.feature_table.shape[0]).unsqueeze(-1).long()

    def user_states(self, history: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """States [B, L, dim] with the request context added (context [B, L, 4] or [B, 4])."""
        h = self.encoder(history, self.hist_features(history))
        if self.context is not None and context is not None:
            c = self.context(context)
            h = h + (c if c.dim() == 3 else c.unsqueeze(1))
        return h

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of items by index, with their training-time content features."""
        return self.item_encoder(ids, self.hist_features(ids))

    def all_items(self) -> torch.Tensor:
        """[n_items, dim]: every row of the catalogue (the full-softmax / full-ranking output layer)."""
        w = self.item_encoder.id.weight
        return self.item_vectors(torch.arange(self.item_encoder.id.num_embeddings, device=w.device))

    def forward(
        self, history: torch.Tensor, context: torch.Tensor, candidates: torch.Tensor, candidate_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The serving signature: scores, p_click, p_conversion, each [B, N]."""
        state = self.user_states(history, context)[:, -1]  # [B, D]
        return self.score_vectors(state, self.item_encoder(candidates, candidate_features))

    def score_vectors(self, state: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The heads: user states [B, D] against candidate vectors [B, N, D] -> scores, p_click, p_conversion."""
        scores = torch.einsum("bd,bnd->bn", state, cand)
        p_click = torch.sigmoid(self.click_scale * scores + self.click_bias)
        conv = torch.einsum("bd,bnd->bn", self.conv_proj(state), cand) + self.conv_bias
        return scores, p_click, torch.sigmoid(conv)


class TwoTower(nn.Module):
    """Retrieval: user tower (causal transformer over history + context) and item tower (id + content).

    Trained with in-batch sampled softmax and logQ correction; the user tower is
    exported to ONNX and the item tower is materialised as ``item_embeddings.npy``.
    """

    feature_table: torch.Tensor  # a registered buffer; declared so type checkers know it is a tensor

    def __init__(self, cfg: ModelConfig, n_items: int, feature_table: torch.Tensor) -> None:
        super().__init__()
        tcfg = cfg.with_(dim=cfg.tower_dim)
        self.register_buffer("feature_table", feature_table.long(), persistent=True)
        self.item_encoder = ItemEncoder(n_items, tcfg.dim, cfg.use_content)
        self.encoder = SequenceEncoder(tcfg, self.item_encoder)
        self.context = ContextEncoder(tcfg.dim) if cfg.use_context else None
        self.user_out = nn.Linear(tcfg.dim, tcfg.dim)
        self.item_out = nn.Linear(tcfg.dim, tcfg.dim)

    def hist_features(self, history: torch.Tensor) -> torch.Tensor:
        idx = history.clamp(max=self.feature_table.shape[0] - 1)
        return self.feature_table[idx] * (history < self.feature_table.shape[0]).unsqueeze(-1).long()

    def user_states(self, history: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.encoder(history, self.hist_features(history))
        if self.context is not None and context is not None:
            c = self.context(context)
            h = h + (c if c.dim() == 3 else c.unsqueeze(1))
        return self.user_out(h)

    def item_vectors(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.item_out(self.item_encoder(ids, feats))

    def all_items(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Item-tower vectors of rows [start, stop) (all rows by default): ``item_embeddings.npy``."""
        stop = stop if stop is not None else self.item_encoder.id.num_embeddings
        ids = torch.arange(start, stop, device=self.item_encoder.id.weight.device)
        return self.item_vectors(ids, self.hist_features(ids))

    def forward(self, history: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The serving signature of ``scalerec_user_tower``: user_embedding [B, D]."""
        return self.user_states(history, context)[:, -1]


def unknown_dropout(ids: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace a share of (non-pad) ids by UNKNOWN so the content path learns to stand alone."""
    if rate <= 0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < rate) & (ids > 0)
    return torch.where(drop, torch.full_like(ids, UNKNOWN), ids)
