"""What Triton would reject in a ``config.pbtxt``, found before Triton loads it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scalerec_features.serving import NUMPY_TO_TRITON, dims_compatible

from scalerec_models.onnx_graph import external_files, load_graph, tensor_specs_from_onnx
from scalerec_models.triton.config import MODEL_FILE, parse_config

__all__ = ["validate_config"]

_TRITON_TO_NUMPY = {v: k for k, v in NUMPY_TO_TRITON.items() if k != "bytes"}


def validate_config(path: Path, model_dir: Path, versions: Sequence[int], problems: list[str]) -> None:
    """Append to ``problems`` what Triton would reject in the config at ``path`` for the model in
    ``model_dir``, whose version folders on disk are ``versions``: the config's own consistency, the
    versions it serves, and its tensors against each served version's ONNX graph."""
    where = str(path)
    try:
        config = parse_config(path.read_text())
    except Exception as exc:  # text_format.ParseError and friends: report, keep validating the rest
        problems.append(f"{where}: not a valid Triton ModelConfig: {exc}")
        return
    from tritonclient.grpc import model_config_pb2

    if config.name and config.name != model_dir.name:
        problems.append(f"{where}: name {config.name!r} differs from its folder {model_dir.name!r}")
    is_python = config.backend == "python"
    if not is_python and config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
        problems.append(f"{where}: expected platform onnxruntime_onnx or backend python, found {config.platform!r}")
    batched = config.max_batch_size > 0
    if config.HasField("dynamic_batching"):
        too_big = [b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size]
        if too_big:
            problems.append(f"{where}: preferred_batch_size {too_big} exceeds max_batch_size {config.max_batch_size}")
    if config.version_policy.HasField("specific"):
        served = list(config.version_policy.specific.versions)
        for v in served:
            if v not in versions:
                problems.append(f"{where}: version_policy serves version {v}, which is not on disk")
        served = [v for v in served if v in versions]
    elif config.version_policy.HasField("all"):
        served = list(versions)
    else:  # Triton's default policy: latest 1
        served = list(versions[-1:])
    if not served:
        problems.append(f"{where}: no version to serve")
    filename = config.default_model_filename or (("model.py") if is_python else MODEL_FILE)
    for v in served:
        vdir = model_dir / str(v)
        if is_python and not (vdir / "model.py").is_file() and not (model_dir / "model.py").is_file():
            problems.append(f"{where}: python backend but {vdir}/model.py is missing")
        onnx_path = vdir / (MODEL_FILE if is_python else filename)
        if not onnx_path.is_file():
            if not is_python:
                problems.append(f"{where}: version {v} has no {onnx_path.name}")
            continue
        try:
            graph = load_graph(onnx_path)
            onnx_in, onnx_out = tensor_specs_from_onnx(onnx_path)
        except Exception as exc:
            problems.append(f"{onnx_path}: unreadable ONNX: {exc}")
            continue
        for location in external_files(graph):
            if not (vdir / location).is_file():
                problems.append(f"{onnx_path}: external data {location!r} is missing")
        for kind, declared, actual in (("input", config.input, onnx_in), ("output", config.output, onnx_out)):
            actual_by_name = {t.name: t for t in actual}
            for tensor in declared:
                got = actual_by_name.get(tensor.name)
                dtype = _TRITON_TO_NUMPY.get(model_config_pb2.DataType.Name(tensor.data_type), "?")
                if got is None:
                    problems.append(f"{where}: {kind} {tensor.name!r} is not in version {v}'s ONNX graph")
                    continue
                if got.dtype != dtype:
                    problems.append(
                        f"{where}: {kind} {tensor.name!r} is {dtype} in the config, {got.dtype} in version {v}"
                    )
                dims = tuple(tensor.dims)
                if not batched:
                    got_dims = (-1, *got.dims)  # the ONNX batch dim is part of the shape when not batched
                    if not dims_compatible(dims, got_dims):
                        problems.append(f"{where}: {kind} {tensor.name!r} dims {dims} vs ONNX {got_dims} (v{v})")
                elif not dims_compatible(dims, got.dims):
                    problems.append(f"{where}: {kind} {tensor.name!r} dims {dims} vs ONNX {got.dims} in version {v}")
            if kind == "input":
                undeclared = set(actual_by_name) - {t.name for t in declared}
                if undeclared:
                    problems.append(f"{where}: version {v}'s ONNX inputs {sorted(undeclared)} are not in the config")
