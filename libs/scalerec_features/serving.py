"""The serving contract: the tensors each served model takes and gives, stated once.

Every shape here is derived from the feature definitions (a context is
``CONTEXT_FIELDS``, an item's content features are ``ITEM_FEATURE_LEN`` wide), so
changing a feature changes the contract with it.  The trainer's ONNX export names
its tensors from here, the model repository refuses a version that differs
(``scalerec_models.repository.check_contract``), the generated Triton configs
declare these tensors, and ``scalerec_models.bundle`` builds request arrays with
these names: none of them can disagree with another.

Shapes leave the batch dimension out (Triton's convention); -1 is a dynamic size
(history length L, candidates N, embedding size D).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scalerec_features.definitions import CONTEXT_FIELDS, ITEM_FEATURE_LEN

__all__ = [
    "CANDIDATES",
    "CANDIDATE_ENCODER",
    "CANDIDATE_FEATURES",
    "CANDIDATE_VECTORS",
    "CONTEXT",
    "HISTORY",
    "P_CLICK",
    "P_CONVERSION",
    "RANKER",
    "RANKER_MODEL",
    "RANKER_ON_VECTORS",
    "RANKER_STATE",
    "SCORES",
    "SERVING_CONTRACTS",
    "USER_EMBEDDING",
    "USER_STATES",
    "USER_TOWER",
    "USER_TOWER_MODEL",
    "ServingContract",
    "TensorSpec",
    "check_contract",
    "contract_problems",
    "dims_compatible",
]

RANKER_MODEL = "scalerec_ranker"
USER_TOWER_MODEL = "scalerec_user_tower"

# numpy dtype name -> Triton's data type (config.pbtxt's TYPE_*), for every dtype a tensor may have.
NUMPY_TO_TRITON = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "object": "TYPE_STRING",
    "bytes": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, as Triton sees it (batch dimension left out)."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32", ...
    dims: tuple[int, ...]  # without the batch dim; -1 = dynamic

    @property
    def triton_dtype(self) -> str:
        """The config.pbtxt data type (``TYPE_INT64``...)."""
        try:
            return NUMPY_TO_TRITON[self.dtype]
        except KeyError:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} has no Triton type") from None


@dataclass(frozen=True)
class ServingContract:
    """What one served model takes and gives, in order."""

    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


# Item indices of the user's history, most recent last, left-padded with 0: [B, L].
HISTORY = TensorSpec("history", "int64", (-1,))
# context_features() of the request: [B, len(CONTEXT_FIELDS)].
CONTEXT = TensorSpec("context", "int64", (len(CONTEXT_FIELDS),))
# Item indices to score, right-padded with 0: [B, N].
CANDIDATES = TensorSpec("candidates", "int64", (-1,))
# item_feature_vector() of each candidate: [B, N, ITEM_FEATURE_LEN].
CANDIDATE_FEATURES = TensorSpec("candidate_features", "int64", (-1, ITEM_FEATURE_LEN))
SCORES = TensorSpec("scores", "float32", (-1,))
P_CLICK = TensorSpec("p_click", "float32", (-1,))
P_CONVERSION = TensorSpec("p_conversion", "float32", (-1,))
USER_EMBEDDING = TensorSpec("user_embedding", "float32", (-1,))
# What the ranker's item encoder makes of each candidate (its id and content): [B, N, D].
CANDIDATE_VECTORS = TensorSpec("candidate_vectors", "float32", (-1, -1))
# The ranker's user state (its sequence encoder's last position plus the context): [B, D].
RANKER_STATE = TensorSpec("ranker_state", "float32", (-1,))

RANKER = ServingContract(
    RANKER_MODEL, (HISTORY, CONTEXT, CANDIDATES, CANDIDATE_FEATURES), (SCORES, P_CLICK, P_CONVERSION)
)
USER_TOWER = ServingContract(USER_TOWER_MODEL, (HISTORY, CONTEXT), (USER_EMBEDDING,))
SERVING_CONTRACTS: dict[str, ServingContract] = {c.model: c for c in (RANKER, USER_TOWER)}

# Two more graphs a ranker version may carry for in-process scoring (scalerec_models.bundle): the
# ranker split at its candidate vectors.  The encoder runs when a version is activated and when an
# item changes; the request sends vectors.  Not Triton models: Triton serves ``RANKER`` whole.
CANDIDATE_ENCODER = ServingContract(RANKER_MODEL, (CANDIDATES, CANDIDATE_FEATURES), (CANDIDATE_VECTORS,))
RANKER_ON_VECTORS = ServingContract(
    RANKER_MODEL, (HISTORY, CONTEXT, CANDIDATE_VECTORS), (SCORES, P_CLICK, P_CONVERSION)
)
# Both models' user side in one graph: the user tower's embedding (retrieval) and the ranker's state, whose
# score against a candidate's vector is one dot product (scalerec_models.bundle.scores_on_vectors): a request
# scored on vectors then runs one graph instead of two.
USER_STATES = ServingContract(RANKER_MODEL, (HISTORY, CONTEXT), (USER_EMBEDDING, RANKER_STATE))


def dims_compatible(declared: Sequence[int], actual: Sequence[int]) -> bool:
    """-1 on either side matches any size; the rank must agree."""
    return len(declared) == len(actual) and all(
        a == b or a == -1 or b == -1 for a, b in zip(declared, actual, strict=False)
    )


def check_contract(model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[str]:
    """Differences between a model's schema and the serving contract for its name ([] when it conforms
    or when the name has no contract)."""
    contract = SERVING_CONTRACTS.get(model)
    if contract is None:
        return []
    return contract_problems(contract, inputs, outputs)


def contract_problems(
    contract: ServingContract, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> list[str]:
    """Differences between a graph's schema and ``contract`` ([] when it conforms)."""
    model = contract.model
    problems: list[str] = []
    for kind, want, have in (("input", contract.inputs, inputs), ("output", contract.outputs, outputs)):
        have_by_name = {t.name: t for t in have}
        for spec in want:
            got = have_by_name.get(spec.name)
            if got is None:
                problems.append(f"{model}: {kind} {spec.name!r} missing (contract wants {spec.dtype} {spec.dims})")
            elif got.dtype != spec.dtype or not dims_compatible(spec.dims, got.dims):
                problems.append(
                    f"{model}: {kind} {spec.name!r} is {got.dtype} {got.dims}, contract wants {spec.dtype} {spec.dims}"
                )
        extra = set(have_by_name) - {s.name for s in want}
        if extra and kind == "input":
            problems.append(f"{model}: inputs {sorted(extra)} are not in the serving contract")
    return problems
