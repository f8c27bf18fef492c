"""Placement by the real scheduler on kwok's nodes: Triton (and anything else asking for a GPU) goes
to the GPU node, which nothing else may use (it is tainted as GPU node pools are)."""

from __future__ import annotations

from typing import Any

from tests.cluster.kube import Release

GPU = "nvidia.com/gpu"


def _gpus_requested(pod: dict[str, Any]) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get(GPU, 0)) for c in pod["spec"]["containers"])


def test_triton_runs_only_on_the_gpu_node(prod: Release) -> None:
    gpu_nodes = {n["metadata"]["name"] for n in prod.cluster.get("nodes") if GPU in n["status"].get("allocatable", {})}
    assert gpu_nodes == {"gpu-1"}
    pods = prod.pods()
    triton = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "triton"]
    assert len(triton) == 2, "the prod-gpu example runs two Triton replicas"
    for p in triton:
        assert _gpus_requested(p) == 1, p["metadata"]["name"]
        assert p["spec"]["nodeName"] in gpu_nodes, p["metadata"]["name"]
    on_gpu = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] in gpu_nodes}
    asking = {p["metadata"]["name"] for p in pods if _gpus_requested(p) > 0}
    assert on_gpu == asking, "only pods that ask for a GPU may take the GPU node"
    assert {p["metadata"]["name"] for p in triton} <= asking


def test_the_gpu_node_is_not_overcommitted(prod: Release) -> None:
    (node,) = [n for n in prod.cluster.get("nodes") if n["metadata"]["name"] == "gpu-1"]
    on_it = [p for p in prod.cluster.get_all("pods") if p["spec"].get("nodeName") == "gpu-1"]
    assert sum(_gpus_requested(p) for p in on_it) <= int(node["status"]["allocatable"][GPU])
