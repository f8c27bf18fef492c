"""One Triton model controller: the evaluator loads and unloads, ranker replicas only follow.

A real tritonserver in explicit model-control mode: the evaluator's ServingController loads what
is needed before anyone is told, a follower (the ranker's ``control=false`` scorer) refuses to load
a version itself and never unloads one another replica may serve, and a version stops being served
only when the controller reconciles without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import make_example_model
import numpy as np
import pytest
from scalerec_adapters.scoring import ScorerUnavailable
from scalerec_adapters.triton_scorer import TritonScorer
from scalerec_evaluator.serving import ServingController
from scalerec_models import repository as repo
from scalerec_models.repository import RANKER_MODEL, USER_TOWER_MODEL, write_model_version


async def test_the_evaluator_alone_loads_and_unloads_rankers_only_follow(
    own_triton: Any, make_inputs: Any, tmp_path: Path
) -> None:
    t = own_triton
    onnx_v2 = make_example_model.build_ranker(tmp_path / "v2.onnx", seed=1)
    assert write_model_version(t.source, RANKER_MODEL, onnx_v2, card={"metrics": {}}) == 2
    t.sync()  # the Python-backend mirror Triton reads gets folder 2 (the production repository is one folder)
    needed = {"versions": {1}}
    controller = ServingController(
        t.source, lambda: set(needed["versions"]), triton_url=f"triton://{t.url}", unload_grace_s=0
    )
    replica_a = TritonScorer(t.url, repository=t.source, control=False)
    replica_b = TritonScorer(t.url, repository=t.source, control=False)
    inputs = make_inputs(np.random.default_rng(3), 2, 20, 30)
    try:
        await controller.reconcile()  # at start: explicit mode starts empty, the champion gets loaded
        assert await replica_a.loaded_versions(RANKER_MODEL) == {1}
        assert await replica_a.loaded_versions(USER_TOWER_MODEL) == {1}
        await replica_a.load(RANKER_MODEL, 1)  # a follower's load: ready and warmed up
        with pytest.raises(ScorerUnavailable, match="not loaded on Triton"):
            await replica_a.load(RANKER_MODEL, 2)  # not its job
        assert await replica_a.loaded_versions(RANKER_MODEL) == {1}

        await controller.add({2})  # an experiment starts (or v2 is promoted): loaded before anyone is told
        assert await replica_a.loaded_versions(RANKER_MODEL) == {1, 2}
        assert repo.read_served_versions(t.source, RANKER_MODEL) == [1, 2]
        await replica_a.load(RANKER_MODEL, 2)
        await replica_a.unload(RANKER_MODEL, 1)  # replica A moved on: replica B still serves v1
        out = await replica_b.infer(RANKER_MODEL, 1, inputs, ["scores"])
        assert out["scores"].shape == (2, 30)

        needed["versions"] = {2}  # v1 is no longer needed: after the grace period the controller unloads it
        await controller.reconcile()
        assert await replica_a.loaded_versions(RANKER_MODEL) == {2}
        assert repo.read_served_versions(t.source, RANKER_MODEL) == [2]
        assert (await replica_b.infer(RANKER_MODEL, 2, inputs, ["scores"]))["scores"].shape == (2, 30)
    finally:
        await replica_a.close()
        await replica_b.close()
        await controller.close()
