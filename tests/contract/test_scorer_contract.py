"""Scorer contract: the same Triton-layout ONNX files give the same numbers on every backend."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from contract_backends import FEATURES, VOCAB
from scalerec_adapters.scoring import Scorer, ScorerUnavailable


def _ids(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, FEATURES), dtype=np.int64)


async def test_infer_matches_numpy(scorer: Scorer) -> None:
    await scorer.load("m", 1)
    ids = _ids(5)
    out = await scorer.infer("m", 1, {"ids": ids}, ["scores", "total"])
    expected = ids.astype(np.float32) * 2 + 1
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["total"], expected.sum(axis=1), rtol=1e-6)
    assert out["scores"].shape == (5, FEATURES) and out["scores"].dtype == np.float32


async def test_only_requested_outputs_come_back(scorer: Scorer) -> None:
    out = await scorer.infer("m", 1, {"ids": _ids(2)}, ["total"])
    assert set(out) == {"total"}


async def test_versions_are_distinct_and_external_data_loads(scorer: Scorer) -> None:
    """Version 2 keeps its weights in model.onnx.data (how large embedding tables ship)."""
    await scorer.load("m", 2)
    ids = _ids(3, seed=1)
    v1, v2 = await asyncio.gather(
        scorer.infer("m", 1, {"ids": ids}, ["scores"]), scorer.infer("m", 2, {"ids": ids}, ["scores"])
    )
    np.testing.assert_allclose(v1["scores"], ids * 2.0 + 1, rtol=1e-6)
    np.testing.assert_allclose(v2["scores"], ids * 3.0 + 1, rtol=1e-6)


async def test_concurrent_requests_get_their_own_answers(scorer: Scorer) -> None:
    batches = [_ids(1 + i % 4, seed=i) for i in range(16)]
    results = await asyncio.gather(*(scorer.infer("m", 1, {"ids": b}, ["scores"]) for b in batches))
    for b, r in zip(batches, results, strict=True):
        np.testing.assert_allclose(r["scores"], b * 2.0 + 1, rtol=1e-6)


async def test_missing_version_or_model_raises_scorer_unavailable(scorer: Scorer) -> None:
    with pytest.raises(ScorerUnavailable, match=r"(?s)'m'.*\b99\b|\b99\b.*'m'"):
        await scorer.infer("m", 99, {"ids": _ids(1)}, ["scores"])
    with pytest.raises(ScorerUnavailable, match="no_such_model"):
        await scorer.load("no_such_model", 1)


async def test_unload_then_reload(scorer: Scorer) -> None:
    await scorer.load("m", 1)
    await scorer.unload("m", 1)
    await scorer.load("m", 1)
    out = await scorer.infer("m", 1, {"ids": _ids(1)}, ["total"])
    assert out["total"].shape == (1,)
    assert await scorer.healthy()
