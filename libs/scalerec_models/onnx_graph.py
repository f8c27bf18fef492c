"""Reading an ONNX graph's schema and its external-data files, without loading its weights.

A production ranker's embedding table is tens of GB in external data; everything here
reads the graph protobuf only, so the trainer, the evaluator and config validation can
inspect a model version cheaply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from scalerec_features.serving import TensorSpec

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "ModelRepositoryError",
    "external_files",
    "load_graph",
    "tensor_specs_from_onnx",
]

# ONNX protobuf files cannot exceed 2 GiB; weights go to external data well before that,
# so the graph itself stays small enough to load and inspect cheaply.
EXTERNAL_DATA_THRESHOLD = 1 << 30


class ModelRepositoryError(RuntimeError):
    """The repository or a model file is not in the shape Triton and the scorers expect."""


def _onnx_dtype(elem_type: int) -> str:
    if elem_type == TensorProto.STRING:
        return "object"
    if elem_type == TensorProto.BFLOAT16:
        return "bfloat16"
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def _value_info_spec(value: onnx.ValueInfoProto, *, batched: bool) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if batched:
        if not dims:
            raise ModelRepositoryError(f"tensor {value.name!r} is a scalar but the model is batched")
        dims = dims[1:]
    return TensorSpec(value.name, _onnx_dtype(tensor.elem_type), tuple(dims))


def load_graph(onnx_path: Path) -> onnx.ModelProto:
    """The graph without its external data (never loaded here: it may be tens of GB)."""
    return onnx.load(str(onnx_path), load_external_data=False)


def tensor_specs_from_onnx(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph as Triton sees them: the first dim is the batch and is dropped.

    Graph inputs that are also initialisers (old exporters list weights as inputs) are
    not model inputs and are skipped.
    """
    model = load_graph(Path(onnx_path))
    initialisers = {init.name for init in model.graph.initializer}
    inputs = [_value_info_spec(v, batched=True) for v in model.graph.input if v.name not in initialisers]
    outputs = [_value_info_spec(v, batched=True) for v in model.graph.output]
    return inputs, outputs


def external_files(model: onnx.ModelProto) -> list[str]:
    """Relative paths of the external-data files a graph refers to (deduplicated, in order)."""
    seen: dict[str, None] = {}
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value, None)
    return list(seen)
