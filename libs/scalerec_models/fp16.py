"""A weight-only fp16 variant of an ONNX model, served next to the fp32 one (``configs/fp16.pbtxt``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scalerec_models.onnx_graph import EXTERNAL_DATA_THRESHOLD

__all__ = ["FP16_MIN_ELEMENTS", "convert_to_fp16"]

# Initialisers smaller than this stay fp32 in the fp16 variant: converting biases and
# layer-norm scales buys nothing and costs accuracy.
FP16_MIN_ELEMENTS = 1024


def convert_to_fp16(source: Path, target: Path) -> None:
    """Write a weight-only fp16 variant of an ONNX model; inputs, outputs and arithmetic stay fp32.

    Why weight-only: scoring is memory-bound (embedding rows and weights read per request),
    so halving the bytes read is the gain; keeping fp32 arithmetic keeps the scores close.
    Embedding tables (initialisers read only by ``Gather``) are stored fp16 and the *gathered
    rows* are cast back, so the full table is never materialised in fp32.  Other large
    initialisers are stored fp16 behind a ``Cast`` (constant-folded by onnxruntime at load,
    so only the file shrinks).
    """
    model = onnx.load(str(source))
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    new_inits, prefix_nodes = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < FP16_MIN_ELEMENTS:
            new_inits.append(init)
            continue
        array = numpy_helper.to_array(init, base_dir=str(source.parent)).astype(np.float16)
        half_name = f"{init.name}__fp16"
        new_inits.append(numpy_helper.from_array(array, half_name))
        uses = consumers.get(init.name, [])
        if uses and all(node.op_type == "Gather" and idx == 0 for node, idx in uses):
            for node, _ in uses:
                node.input[0] = half_name
                original_out = node.output[0]
                gathered = f"{original_out}__fp16"
                node.output[0] = gathered
                cast = helper.make_node("Cast", [gathered], [original_out], to=TensorProto.FLOAT)
                # Insert right after the Gather to keep the graph topologically sorted.
                position = list(graph.node).index(node) + 1
                graph.node.insert(position, cast)
        else:
            prefix_nodes.append(helper.make_node("Cast", [half_name], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    for node in reversed(prefix_nodes):
        graph.node.insert(0, node)
    total = sum(int(np.prod(i.dims)) * 2 for i in new_inits)
    if total > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{target.name}.data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(target))
