"""TritonScorer against a real tritonserver: same numbers as in-process, batching, hot swap, fallback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

# scripts/triton is put on sys.path by conftest.py (it is not a package).
import local_server
import make_example_model
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.triton_scorer import FallbackScorer, TritonScorer, last_backend
from scalerec_features import HISTORY_LEN
from scalerec_models.repository import RANKER_MODEL, USER_TOWER_MODEL, write_model_version
from scalerec_ranker.config import RankerSettings

pytestmark = pytest.mark.integration

OUTPUTS = ["scores", "p_click", "p_conversion"]


def _ort(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(OUTPUTS, inputs), strict=True))


def _torch_ranker(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example ranker re-implemented in torch from the ONNX weights (an independent reference)."""
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer}
    x = {k: torch.from_numpy(v) for k, v in inputs.items()}
    vocab = int(w["vocab"])
    user = w["item_table"][x["history"] % vocab].mean(1) + w["context_table"][x["context"] % vocab].sum(1)
    item = w["item_table"][x["candidates"] % vocab] + w["feature_table"][x["candidate_features"] % vocab].mean(2)
    logit = (item * user[:, None, :]).sum(-1)
    p_click = torch.sigmoid(logit)
    p_conv = torch.sigmoid(logit * w["conv_w"] + w["conv_b"])
    scores = p_click + p_conv * w["conv_weight_in_score"]
    return {"scores": scores.numpy(), "p_click": p_click.numpy(), "p_conversion": p_conv.numpy()}


async def test_triton_scores_equal_onnxruntime_and_torch(triton: Any, make_inputs: Any) -> None:
    scorer = TritonScorer(triton.url, repository=triton.source, timeout=10)
    try:
        await scorer.load(RANKER_MODEL, 1)
        rng = np.random.default_rng(7)
        model_file = triton.source / RANKER_MODEL / "1" / "model.onnx"
        for batch, history, candidates in ((1, 1, 1), (8, 20, 50), (3, 50, 200)):
            inputs = make_inputs(rng, batch, history, candidates)
            got = await scorer.infer(RANKER_MODEL, 1, inputs, OUTPUTS)
            want = _ort(model_file, inputs)
            reference = _torch_ranker(model_file, inputs)
            for name in OUTPUTS:
                assert got[name].shape == (batch, candidates)
                assert got[name].dtype == np.float32
                np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
                np.testing.assert_allclose(got[name], reference[name], rtol=0, atol=1e-5)

        await scorer.load(USER_TOWER_MODEL, 1)
        inputs = make_inputs(rng, 5)
        tower_in = {k: inputs[k] for k in ("history", "context")}
        got = await scorer.infer(USER_TOWER_MODEL, 1, tower_in, ["user_embedding"])
        session = ort.InferenceSession(str(triton.source / USER_TOWER_MODEL / "1" / "model.onnx"))
        np.testing.assert_allclose(got["user_embedding"], session.run(None, tower_in)[0], rtol=0, atol=1e-5)

        # Bad input is the caller's error: reported with context, and it does not open the breaker.
        bad = dict(inputs, context=inputs["context"][:, :3])
        with pytest.raises(ScorerUnavailable, match="scalerec_ranker"):
            await scorer.infer(RANKER_MODEL, 1, bad, OUTPUTS)
        assert scorer.breaker.state.value == "closed"
    finally:
        await scorer.close()


async def test_dynamic_batching_merges_concurrent_requests(triton: Any, make_inputs: Any) -> None:
    """Full-size requests as the ranker sends them (history HISTORY_LEN, candidates padded to MAX_CANDIDATES):
    N concurrent ones run in fewer than N executions."""
    # No warm-up: its inference can reach Triton's statistics after the "before" snapshot.
    scorer = TritonScorer(triton.url, repository=triton.source, timeout=30, warmup=False)
    full = RankerSettings.model_fields["max_candidates"].default
    try:
        await scorer.load(RANKER_MODEL, 1)
        before = await scorer.statistics(RANKER_MODEL, 1)
        rng = np.random.default_rng(3)
        requests = [make_inputs(rng, 1, HISTORY_LEN, full) for _ in range(300)]
        results = await asyncio.gather(*(scorer.infer(RANKER_MODEL, 1, r, ["scores"]) for r in requests))
        assert len(results) == 300
        stats = (await scorer.statistics(RANKER_MODEL, 1))["model_stats"][0]
        batch_sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
        print(f"dynamic batching: executions per batch size {batch_sizes}")
        assert max(batch_sizes) > 1, f"Triton never merged requests: {batch_sizes}"
        new_inferences = int(stats["inference_count"]) - int(before["model_stats"][0].get("inference_count", 0))
        new_executions = int(stats["execution_count"]) - int(before["model_stats"][0].get("execution_count", 0))
        assert new_inferences == 300
        assert new_executions < new_inferences
        # A merged batch returns each caller its own rows.
        want = _ort(triton.source / RANKER_MODEL / "1" / "model.onnx", requests[123])
        np.testing.assert_allclose(results[123]["scores"], want["scores"], rtol=0, atol=1e-5)
    finally:
        await scorer.close()


async def test_swap_v1_to_v2_under_load_drops_nothing(triton: Any, make_inputs: Any, tmp_path: Path) -> None:
    # No retries: a dropped request must show up as a failure, not be hidden by a second attempt.
    scorer = TritonScorer(triton.url, repository=triton.source, timeout=30, retries=0)
    rng = np.random.default_rng(11)
    inputs = make_inputs(rng, 4, 20, 30)
    current = {"version": 1}
    answered: dict[int, int] = {1: 0, 2: 0}
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            version = current["version"]
            try:
                out = await scorer.infer(RANKER_MODEL, version, inputs, ["scores"])
                assert out["scores"].shape == (4, 30)
                answered[version] += 1
            except Exception as exc:  # every failure is a dropped request
                failures.append(exc)

    try:
        await scorer.load(RANKER_MODEL, 1)
        workers = [asyncio.create_task(stream()) for _ in range(8)]
        await asyncio.sleep(0.3)
        # The trainer writes version 2 (a different model) while version 1 takes traffic.
        onnx_v2 = make_example_model.build_ranker(tmp_path / "v2.onnx", seed=1)
        assert write_model_version(triton.source, RANKER_MODEL, onnx_v2, card={"metrics": {}}) == 2
        triton.sync()
        await scorer.load(RANKER_MODEL, 2)  # v1 keeps serving while v2 loads
        assert await scorer.loaded_versions(RANKER_MODEL) == {1, 2}
        current["version"] = 2  # the ranker switches
        await asyncio.sleep(0.2)
        await scorer.unload(RANKER_MODEL, 1)  # in-flight v1 requests finish first
        assert await scorer.loaded_versions(RANKER_MODEL) == {2}
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        assert failures == [], f"{len(failures)} requests failed during the swap: {failures[:3]}"
        print(f"swap: answered per version {answered}")
        assert answered[1] > 0 and answered[2] > 0
        got = await scorer.infer(RANKER_MODEL, 2, inputs, ["scores"])
        want = _ort(triton.source / RANKER_MODEL / "2" / "model.onnx", inputs)["scores"]
        np.testing.assert_allclose(got["scores"], want, rtol=0, atol=1e-5)
        old = _ort(triton.source / RANKER_MODEL / "1" / "model.onnx", inputs)["scores"]
        assert not np.allclose(want, old), "v2 must be a different model for the swap to mean anything"
        with pytest.raises(ScorerUnavailable):
            await scorer.infer(RANKER_MODEL, 1, inputs, ["scores"])
    finally:
        stop.set()
        await scorer.load(RANKER_MODEL, 1)  # leave the session server as other tests expect it
        await scorer.close()


async def test_fallback_answers_from_onnxruntime_when_triton_stops(own_triton: Any, make_inputs: Any) -> None:
    triton = TritonScorer(
        own_triton.url, repository=own_triton.source, timeout=2, failure_threshold=3, reset_timeout=60
    )
    scorer = FallbackScorer(triton, OnnxRuntimeScorer(own_triton.source))
    rng = np.random.default_rng(5)
    requests = [make_inputs(rng, 2, 10, 20) for _ in range(40)]
    model_file = own_triton.source / RANKER_MODEL / "1" / "model.onnx"
    want = [_ort(model_file, r)["scores"] for r in requests]

    async def score(i: int) -> tuple[np.ndarray, str | None]:
        out = await scorer.infer(RANKER_MODEL, 1, requests[i], ["scores"])
        return out["scores"], last_backend()  # each task sees the backend of its own call

    try:
        await scorer.load(RANKER_MODEL, 1)
        before = await asyncio.gather(*(score(i) for i in range(20)))
        assert {backend for _, backend in before} == {"triton"}

        local_server.stop_triton_server(own_triton.server)
        assert not await scorer.primary.healthy()
        assert await scorer.healthy()
        started = time.monotonic()
        after = await asyncio.gather(*(score(i) for i in range(20, 40)))
        elapsed = time.monotonic() - started
        assert {backend for _, backend in after} == {"onnxruntime"}
        for i, (scores, _) in enumerate(before + after):
            np.testing.assert_allclose(scores, want[i], rtol=0, atol=1e-5)
        # The breaker is open: further calls fail over at once instead of waiting for a deadline.
        assert triton.breaker.state.value == "open"
        started = time.monotonic()
        _, backend = await scorer.infer_with_backend(RANKER_MODEL, 1, requests[0], ["scores"])
        assert backend == "onnxruntime"
        assert time.monotonic() - started < 0.5
        assert elapsed < 10
    finally:
        await scorer.close()


async def test_traffic_returns_to_triton_after_it_restarts(own_triton: Any, make_inputs: Any, tmp_path: Path) -> None:
    """Down → fallback (breaker opens); back up, empty (explicit mode) → model re-loaded, traffic returns."""
    triton = TritonScorer(own_triton.url, timeout=2, failure_threshold=2, reset_timeout=0.3)
    scorer = FallbackScorer(triton, OnnxRuntimeScorer(own_triton.source), reload_interval=0.3)
    inputs = make_inputs(np.random.default_rng(9), 2, 10, 20)
    want = _ort(own_triton.source / RANKER_MODEL / "1" / "model.onnx", inputs)["scores"]
    backends: list[str] = []

    async def score() -> None:
        out, backend = await scorer.infer_with_backend(RANKER_MODEL, 1, inputs, ["scores"])
        np.testing.assert_allclose(out["scores"], want, rtol=0, atol=1e-5)
        backends.append(backend)

    old = own_triton.server
    try:
        await scorer.load(RANKER_MODEL, 1)
        await score()
        local_server.stop_triton_server(old)
        for _ in range(5):
            await score()
        assert backends[0] == "triton" and set(backends[1:]) == {"onnxruntime"}
        grpc_port, http_port, metrics_port = (
            int(u.rsplit(":", 1)[1]) for u in (old.grpc_url, old.http_url, old.metrics_url)
        )
        own_triton.server = local_server.start_triton_server(
            own_triton.served,
            work_dir=tmp_path,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
        )
        deadline = time.monotonic() + 30
        while backends[-1] != "triton" and time.monotonic() < deadline:
            await score()  # every call answers, from whichever backend is up
            await asyncio.sleep(0.1)
        assert backends[-1] == "triton", f"traffic never returned to Triton: {backends[-5:]}"
        assert triton.breaker.state.value == "closed"
    finally:
        await scorer.close()
