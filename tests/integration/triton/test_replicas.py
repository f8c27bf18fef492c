"""Triton as several replicas: the evaluator controls each one, rankers' requests are spread over all.

Two real tritonservers on one model repository (as the chart's Triton pods share one volume), named
together as ``triton://ip:port,ip:port`` (in a cluster: one headless Service name that resolves to
every pod). Through one connection to a ClusterIP, the evaluator would load a new version on one pod
only and each ranker would send all its requests to one pod.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import local_server
import make_example_model
import numpy as np
from scalerec_adapters.factory import make_scorer, triton_replica_urls
from scalerec_adapters.triton_scorer import FallbackScorer, TritonScorer
from scalerec_evaluator.serving import ServingController
from scalerec_models.repository import RANKER_MODEL, USER_TOWER_MODEL, write_model_version
from tritonclient.utils import InferenceServerException

from tests.integration.triton.conftest import QUEUE_DELAY_US


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


async def _inferences(address: str, version: int) -> int:
    """How many requests this replica has scored with the ranker's ``version``."""
    triton = TritonScorer(address)
    try:
        stats = await triton.statistics(RANKER_MODEL, version)
    finally:
        await triton.close()
    return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))


async def test_every_replica_is_controlled_repaired_and_scores(tmp_path: Path, make_inputs: Any) -> None:
    source = tmp_path / "model_repository"
    make_example_model.write_examples(source, seed=0)
    served = local_server.make_python_backend_repository(source, tmp_path / "served", max_queue_delay_us=QUEUE_DELAY_US)
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(local_server.start_triton_server(served, work_dir=tmp_path / name, model_control="explicit"))
    addresses = [s.grpc_url for s in servers]
    url = "triton://" + ",".join(addresses)
    assert triton_replica_urls(url) == sorted(f"triton://{a}" for a in addresses)
    needed = {"versions": {1}}
    controller = ServingController(source, lambda: set(needed["versions"]), triton_url=url, unload_grace_s=0)
    ranker = make_scorer(url, repository=source, control="false")  # a ranker's follower, over both replicas
    assert isinstance(ranker, TritonScorer)
    replicas = [TritonScorer(a) for a in addresses]
    inputs = make_inputs(np.random.default_rng(5), 1, 20, 30)
    try:
        await controller.reconcile()  # at the evaluator's start: the champion on every replica
        for replica in replicas:
            assert await replica.loaded_versions(RANKER_MODEL) == {1}
            assert await replica.loaded_versions(USER_TOWER_MODEL) == {1}

        before = [await _inferences(a, 1) for a in addresses]
        for _ in range(20):
            assert (await ranker.infer(RANKER_MODEL, 1, inputs, ["scores"]))["scores"].shape == (1, 30)
        after = [await _inferences(a, 1) for a in addresses]
        spread = [b - a for a, b in zip(before, after, strict=True)]
        assert sum(spread) == 20 and min(spread) >= 5, spread  # per request, not one replica per connection

        # Replica b restarts (explicit model control: it comes back empty) on the same address.
        local_server.stop_triton_server(servers[1])
        b = addresses[1]
        (tmp_path / "b2").mkdir()
        servers[1] = local_server.start_triton_server(
            served, work_dir=tmp_path / "b2", model_control="explicit", grpc_port=_port(b)
        )
        await replicas[1].close()
        replicas[1] = TritonScorer(b)
        # gRPC reconnects to an address it lost after a backoff (1 s, growing): wait until b answers.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert await replicas[1].loaded_versions(RANKER_MODEL) == set()
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, "the restarted replica never answered"
                await asyncio.sleep(0.5)
        # Until the repair: half of the ranker's requests reach the empty replica (NOT_FOUND), and are sent
        # once more, to the other one: none falls back.
        for _ in range(10):
            assert (await ranker.infer(RANKER_MODEL, 1, inputs, ["scores"]))["scores"].shape == (1, 30)
        await controller.repair()  # what the evaluator runs every TRITON_REPAIR_S
        assert await replicas[1].loaded_versions(RANKER_MODEL) == {1}
        assert await replicas[1].loaded_versions(USER_TOWER_MODEL) == {1}

        # A promotion: loaded on every replica before anyone is told; the old one unloaded everywhere after.
        onnx_v2 = make_example_model.build_ranker(tmp_path / "v2.onnx", seed=1)
        assert write_model_version(source, RANKER_MODEL, onnx_v2, card={"metrics": {}}) == 2
        local_server.make_python_backend_repository(source, served, max_queue_delay_us=QUEUE_DELAY_US)
        await controller.add({2})
        for replica in replicas:
            assert await replica.loaded_versions(RANKER_MODEL) == {1, 2}
        needed["versions"] = {2}
        await controller.reconcile()
        for replica in replicas:
            assert await replica.loaded_versions(RANKER_MODEL) == {2}
        follower = FallbackScorer(ranker, make_scorer("onnxruntime://?inline=1", repository=source))
        await follower.load(RANKER_MODEL, 2)  # both replicas have it: the ranker swaps onto Triton at once
        _, backend = await follower.infer_with_backend(RANKER_MODEL, 2, inputs, ["scores"])
        assert backend == "triton"
    finally:
        for replica in replicas:
            await replica.close()
        await ranker.close()
        await controller.close()
        for server in servers:
            local_server.stop_triton_server(server)
