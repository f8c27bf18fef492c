"""Triton Python-backend model that runs the version folder's ``model.onnx`` with onnxruntime.

Copied as ``<model>/<version>/model.py`` by ``local_server.make_python_backend_repository``.
Why: the tritonserver shipped in the nvidia-pytriton wheel has no onnxruntime backend,
but tests must exercise the real server (dynamic batching, model control, version
policy) on the exact ONNX bytes the trainer wrote.

Dynamic batching hands ``execute`` several requests at once; requests whose non-batch
shapes agree are concatenated into one onnxruntime call, which is what the onnxruntime
backend does on GPU, then the outputs are split back per request.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _to_numpy(tensor: Any) -> np.ndarray:
    """Input tensor -> numpy through DLPack.

    Why not ``as_numpy()``: the stub's pybind11 numpy bridge was built against NumPy 1.x and
    silently yields wrong or empty buffers with NumPy 2 in the venv; DLPack is ABI-stable.
    """
    return np.from_dlpack(tensor)


# numpy's DLPack capsule destructor expects a consumer to rename the capsule "used_dltensor";
# the stub renames it differently, so numpy would print "PyCapsule_GetPointer called with
# incorrect name" for every output.  The stub owns (and frees) the tensor once it took it.
_USED_CAPSULE = b"used_dltensor"  # module-level: the capsule keeps a pointer to this buffer
ctypes.pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
ctypes.pythonapi.PyCapsule_SetName.restype = ctypes.c_int


def _from_numpy(name: str, array: np.ndarray) -> Any:
    """numpy -> output tensor through DLPack (see ``_to_numpy`` for why not ``pb_utils.Tensor(name, array)``)."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    ctypes.pythonapi.PyCapsule_SetName(capsule, _USED_CAPSULE)
    return tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        options = ort.SessionOptions()
        # One instance per CPU core is Triton's unit of parallelism: keep each session single-threaded
        # unless told otherwise, so instances do not fight over cores.
        options.intra_op_num_threads = int(os.environ.get("SCALEREC_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=providers)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds_per_request = []
        for request in requests:
            feeds = {name: _to_numpy(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names}
            feeds_per_request.append(feeds)
        results: list[list[np.ndarray] | None] = [None] * len(requests)
        # Group requests with identical non-batch shapes so each group is one session.run.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, feeds in enumerate(feeds_per_request):
            key = tuple(feeds[n].shape[1:] if self.batched else feeds[n].shape for n in self.input_names)
            groups.setdefault(key, []).append(i)
        errors: dict[int, str] = {}
        for members in groups.values():
            try:
                if len(members) == 1 or not self.batched:
                    for i in members:
                        results[i] = self._run(feeds_per_request[i])
                    continue
                merged = {n: np.concatenate([feeds_per_request[i][n] for i in members]) for n in self.input_names}
                outputs = self._run(merged)
                offset = 0
                for i in members:
                    size = feeds_per_request[i][self.input_names[0]].shape[0]
                    results[i] = [o[offset : offset + size] for o in outputs]
                    offset += size
            except Exception as exc:  # a bad request fails alone, with onnxruntime's message
                for i in members:
                    errors[i] = f"onnxruntime: {exc}"
        responses = []
        for i, result in enumerate(results):
            if result is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors.get(i, "no output"))))
                continue
            tensors = [_from_numpy(n, o) for n, o in zip(self.output_names, result, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.session = None
