"""Triton model repository: versioned ONNX models, model cards and generated ``config.pbtxt``.

Layout (Triton's, so a Triton server can point straight at the folder)::

    <repository>/<model>/config.pbtxt            GPU config, onnxruntime backend (generated)
    <repository>/<model>/configs/cpu.pbtxt       same model on KIND_CPU (``--model-config-name=cpu``)
    <repository>/<model>/configs/fp16.pbtxt      only when every served version has an fp16 variant
    <repository>/<model>/champion                the evaluator's champion version (one integer)
    <repository>/<model>/<N>/model.onnx          + model.onnx.data (external weights) when present
    <repository>/<model>/<N>/card.json           model card: metrics, data window, feature version, schema
    <repository>/<model>/<N>/...                 extra files (vocab.json, item_embeddings.npy, ...)

Why it is generated, never hand-written: the config must agree with the ONNX graph
(names, dtypes, dims), and a mismatch only shows up when Triton refuses to load the
model in production.  So the config is derived from the graph, and
:func:`validate_repository` re-checks it with Triton's own protobuf schema.

Writes are atomic: a version is assembled in a hidden staging folder (Triton ignores
folders whose name is not an integer) and renamed into place; configs and the
champion file are replaced with ``os.replace``.  A reader (Triton, the ranker's
embedded scorer, the evaluator) never sees half a version.

This module needs numpy and onnx only (no torch, no tritonclient at import time), so
the trainer, the evaluator and the ranker can all use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scalerec_features.serving import (
    NUMPY_TO_TRITON,
    RANKER_MODEL,
    SERVING_CONTRACTS,
    USER_TOWER_MODEL,
    TensorSpec,
    check_contract,
    dims_compatible,
)

__all__ = [
    "CARD_FILE",
    "CHAMPION_FILE",
    "MODEL_FILE",
    "MODEL_FILE_FP16",
    "RANKER_MODEL",
    "SERVING_CONTRACTS",
    "USER_TOWER_MODEL",
    "ModelRepositoryError",
    "ServingOptions",
    "TensorSpec",
    "check_contract",
    "config_pbtxt",
    "convert_to_fp16",
    "list_versions",
    "next_version",
    "read_card",
    "read_champion",
    "read_served_versions",
    "remove_version",
    "set_served_versions",
    "tensor_specs_from_onnx",
    "validate_repository",
    "write_champion",
    "write_model_version",
]

MODEL_FILE = "model.onnx"
MODEL_FILE_FP16 = "model.fp16.onnx"
CARD_FILE = "card.json"
CHAMPION_FILE = "champion"
CONFIG_FILE = "config.pbtxt"
CONFIGS_DIR = "configs"

# ONNX protobuf files cannot exceed 2 GiB; weights go to external data well before that,
# so the graph itself stays small enough to load and inspect cheaply.
EXTERNAL_DATA_THRESHOLD = 1 << 30
# Initialisers smaller than this stay fp32 in the fp16 variant: converting biases and
# layer-norm scales buys nothing and costs accuracy.
FP16_MIN_ELEMENTS = 1024


class ModelRepositoryError(RuntimeError):
    """The repository or a model file is not in the shape Triton and the scorers expect."""


@dataclass(frozen=True)
class ServingOptions:
    """How a model is served; stored in each version's card so configs can be regenerated."""

    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 500
    gpu_instances: int = 1
    cpu_instances: int = 1

    def preferred(self) -> list[int]:
        if self.preferred_batch_sizes:
            return sorted({b for b in self.preferred_batch_sizes if 0 < b <= self.max_batch_size})
        # Powers of two from 1/4 of the maximum up: the sizes a GPU kernel is tuned for, and
        # large enough that batching pays, small enough that the queue delay is rarely hit.
        sizes, b = [], max(1, self.max_batch_size // 4)
        while b <= self.max_batch_size:
            sizes.append(b)
            b *= 2
        return sizes


_TRITON_TO_NUMPY = {v: k for k, v in NUMPY_TO_TRITON.items() if k != "bytes"}


# --------------------------------------------------------------------------- ONNX schema


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


def _load_graph(onnx_path: Path) -> onnx.ModelProto:
    # Never load external data here: a production ranker's embedding table is tens of GB.
    return onnx.load(str(onnx_path), load_external_data=False)


def tensor_specs_from_onnx(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph as Triton sees them: the first dim is the batch and is dropped.

    Graph inputs that are also initialisers (old exporters list weights as inputs) are
    not model inputs and are skipped.
    """
    model = _load_graph(Path(onnx_path))
    initialisers = {init.name for init in model.graph.initializer}
    inputs = [_value_info_spec(v, batched=True) for v in model.graph.input if v.name not in initialisers]
    outputs = [_value_info_spec(v, batched=True) for v in model.graph.output]
    return inputs, outputs


def _external_files(model: onnx.ModelProto) -> list[str]:
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


# --------------------------------------------------------------------------- versions


def _model_dir(repository: Path, model: str) -> Path:
    if not model or "/" in model or model.startswith("."):
        raise ModelRepositoryError(f"invalid model name {model!r}")
    return Path(repository) / model


def list_versions(repository: Path, model: str) -> list[int]:
    """Versions on disk, ascending; staging folders and Triton-ignored names (``01``) are skipped."""
    folder = _model_dir(repository, model)
    if not folder.is_dir():
        return []
    versions = []
    for child in folder.iterdir():
        name = child.name
        if child.is_dir() and name.isdigit() and not (len(name) > 1 and name.startswith("0")) and int(name) > 0:
            versions.append(int(name))
    return sorted(versions)


def next_version(repository: Path, model: str) -> int:
    """One more than the highest version on disk (1 for a new model); versions are never reused."""
    versions = list_versions(repository, model)
    return versions[-1] + 1 if versions else 1


def read_card(repository: Path, model: str, version: int) -> dict[str, Any]:
    path = _model_dir(repository, model) / str(version) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelRepositoryError(f"{model} version {version}: no {CARD_FILE} at {path}") from None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_champion(repository: Path, model: str) -> int | None:
    """The champion version recorded by the evaluator, or None before the first promotion."""
    path = _model_dir(repository, model) / CHAMPION_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise ModelRepositoryError(f"{path}: expected a version number, found {text!r}")
    return int(text)


def write_champion(repository: Path, model: str, version: int) -> None:
    """Record ``version`` as champion (atomic replace). Does not change what Triton serves:
    promotion is ``write_champion`` + :func:`set_served_versions` + a Triton ``load_model``."""
    if version not in list_versions(repository, model):
        raise ModelRepositoryError(f"{model}: cannot make version {version} champion, it is not in the repository")
    _atomic_write_text(_model_dir(repository, model) / CHAMPION_FILE, f"{version}\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _copy_onnx(source: Path, target_dir: Path, *, target_name: str = MODEL_FILE) -> None:
    """Copy an ONNX file and the external-data files it refers to.

    A file that inlines more than EXTERNAL_DATA_THRESHOLD bytes of weights is rewritten with
    its weights in ``<target_name>.data`` so the graph stays small and far below protobuf's 2 GiB cap.
    """
    graph = _load_graph(source)
    external = _external_files(graph)
    if not external and source.stat().st_size > EXTERNAL_DATA_THRESHOLD:
        full = onnx.load(str(source))
        onnx.save_model(
            full,
            str(target_dir / target_name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{target_name}.data",
            size_threshold=1024,
        )
        return
    shutil.copyfile(source, target_dir / target_name)
    for location in external:
        src = source.parent / location
        if not src.is_file():
            raise ModelRepositoryError(f"{source}: external data file {location!r} not found next to it")
        dst = target_dir / location
        if dst.resolve().parent != target_dir.resolve() and target_dir.resolve() not in dst.resolve().parents:
            raise ModelRepositoryError(f"{source}: external data location {location!r} escapes the version folder")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


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


def write_model_version(
    repository: Path,
    model: str,
    onnx_file: Path,
    *,
    card: Mapping[str, Any],
    extra_files: Mapping[str, Path] = {},
    max_batch_size: int = 256,
    version: int | None = None,
    fp16: bool = False,
    options: ServingOptions | None = None,
    served_versions: Iterable[int] | None = None,
) -> int:
    """Add a new immutable version of ``model`` and regenerate its configs; returns the version.

    ``card`` carries what the trainer knows (metrics, data window, feature version ...);
    this adds the model name, version, created_at, the input/output schema, the serving
    options and the file sizes.  ``extra_files`` maps a file name in the version folder
    to a source path (vocab.json, item_embeddings.npy ...).

    The config's version policy serves ``served_versions`` when given, else the champion
    (if any) plus this new version: the candidate is loadable next to the champion for
    shadow scoring and A/B tests, and older versions stop being served.
    """
    repository = Path(repository)
    onnx_file = Path(onnx_file)
    model_dir = _model_dir(repository, model)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(repository, model) if version is None else int(version)
    if version < 1:
        raise ModelRepositoryError(f"{model}: versions start at 1, got {version}")
    final = model_dir / str(version)
    if final.exists():
        raise ModelRepositoryError(f"{model} version {version} already exists at {final}; versions are immutable")
    inputs, outputs = tensor_specs_from_onnx(onnx_file)
    problems = check_contract(model, inputs, outputs)
    if problems:
        raise ModelRepositoryError("; ".join(problems))
    opts = options or ServingOptions(max_batch_size=max_batch_size)
    for name in extra_files:
        if name in {MODEL_FILE, MODEL_FILE_FP16, CARD_FILE} or "/" in name or name.startswith("."):
            raise ModelRepositoryError(f"extra file name {name!r} is reserved or not a plain file name")

    staging = model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _copy_onnx(onnx_file, staging)
        if fp16:
            convert_to_fp16(staging / MODEL_FILE, staging / MODEL_FILE_FP16)
        for name, source in extra_files.items():
            shutil.copyfile(source, staging / name)
        full_card = {
            **dict(card),
            "model": model,
            "version": version,
            "created_at": card.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
            "inputs": [asdict(t) for t in inputs],
            "outputs": [asdict(t) for t in outputs],
            "serving": {**asdict(opts), "fp16": fp16},
            "files": {
                p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file() and p.name != CARD_FILE
            },
        }
        (staging / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n")
        _fsync_tree(staging)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.chmod(0o755)
        os.rename(staging, final)  # atomic on one filesystem; fails if another writer won the race
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if served_versions is None:
        champion = read_champion(repository, model)
        served_versions = {version} | ({champion} if champion else set())
    set_served_versions(repository, model, served_versions)
    return version


def remove_version(repository: Path, model: str, version: int) -> None:
    """Delete a version that is neither champion nor served (retention); unload it from Triton first."""
    if version == read_champion(repository, model):
        raise ModelRepositoryError(f"{model}: version {version} is the champion")
    if version in read_served_versions(repository, model):
        raise ModelRepositoryError(f"{model}: version {version} is in the config's version_policy; unserve it first")
    folder = _model_dir(repository, model) / str(version)
    # Rename first so a reader never sees a half-deleted version folder.
    doomed = folder.with_name(f".deleting-{version}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed)


# --------------------------------------------------------------------------- configs


def _merge_specs(per_version: list[list[TensorSpec]], what: str, model: str) -> list[TensorSpec]:
    """One spec per tensor name across served versions; dims that differ become -1, dtypes must agree."""
    merged: dict[str, TensorSpec] = {}
    for specs in per_version:
        for spec in specs:
            old = merged.get(spec.name)
            if old is None:
                merged[spec.name] = spec
                continue
            if old.dtype != spec.dtype or len(old.dims) != len(spec.dims):
                raise ModelRepositoryError(
                    f"{model}: {what} {spec.name!r} is {old.dtype}{old.dims} in one served version and "
                    f"{spec.dtype}{spec.dims} in another; they cannot share one config"
                )
            dims = tuple(a if a == b else -1 for a, b in zip(old.dims, spec.dims, strict=False))
            merged[spec.name] = TensorSpec(spec.name, spec.dtype, dims)
    return list(merged.values())


def _tensor_block(key: str, specs: Sequence[TensorSpec]) -> str:
    rows = []
    for spec in specs:
        dims = ", ".join(str(d) for d in spec.dims) if spec.dims else ""
        rows.append(f'  {{\n    name: "{spec.name}"\n    data_type: {spec.triton_dtype}\n    dims: [ {dims} ]\n  }}')
    return f"{key} [\n" + ",\n".join(rows) + "\n]\n"


def config_pbtxt(
    model: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    versions: Iterable[int],
    options: ServingOptions = ServingOptions(),
    kind: str = "KIND_GPU",
    model_filename: str = MODEL_FILE,
    backend: str = "onnxruntime",
) -> str:
    """Text of a Triton ``config.pbtxt`` for an ONNX model.

    ``backend="python"`` gives the same schema for a Python-backend model (used by the
    tests and by deployments whose Triton build lacks the onnxruntime backend).
    """
    served = sorted(set(versions))
    if not served:
        raise ModelRepositoryError(f"{model}: a config must serve at least one version")
    count = options.gpu_instances if kind == "KIND_GPU" else options.cpu_instances
    head = [f'name: "{model}"']
    if backend == "onnxruntime":
        head += [
            'platform: "onnxruntime_onnx"',
            'backend: "onnxruntime"',
            f'default_model_filename: "{model_filename}"',
        ]
    else:
        head += [f'backend: "{backend}"']
    text = "\n".join(head) + "\n"
    text += f"max_batch_size: {options.max_batch_size}\n"
    text += f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, served))} ] }} }}\n"
    text += _tensor_block("input", inputs)
    text += _tensor_block("output", outputs)
    text += f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"
    if options.max_batch_size > 0:
        preferred = ", ".join(map(str, options.preferred()))
        text += (
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {preferred} ]\n"
            f"  max_queue_delay_microseconds: {options.max_queue_delay_microseconds}\n"
            "}\n"
        )
    return text


def read_served_versions(repository: Path, model: str) -> list[int]:
    """The versions in ``config.pbtxt``'s ``version_policy`` ([] when there is no config yet)."""
    path = _model_dir(repository, model) / CONFIG_FILE
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("version_policy:") and "versions:" in line:
            inside = line.split("[", 1)[1].split("]", 1)[0]
            return sorted(int(v) for v in inside.replace(",", " ").split())
    return []


def set_served_versions(repository: Path, model: str, versions: Iterable[int]) -> None:
    """Regenerate ``config.pbtxt`` and ``configs/*.pbtxt`` so Triton serves exactly ``versions``.

    The schema is merged from the served versions' ONNX graphs and the serving options
    come from the newest served version's card.  Triton picks the change up on the next
    ``load_model`` call (explicit model control), which keeps unchanged versions serving
    while new ones load.
    """
    repository = Path(repository)
    wanted = sorted({int(v) for v in versions})
    on_disk = set(list_versions(repository, model))
    missing = [v for v in wanted if v not in on_disk]
    if not wanted or missing:
        raise ModelRepositoryError(
            f"{model}: cannot serve versions {wanted}; missing on disk: {missing or 'none given'}"
        )
    model_dir = _model_dir(repository, model)
    all_inputs, all_outputs = [], []
    for v in wanted:
        i, o = tensor_specs_from_onnx(model_dir / str(v) / MODEL_FILE)
        all_inputs.append(i)
        all_outputs.append(o)
    inputs = _merge_specs(all_inputs, "input", model)
    outputs = _merge_specs(all_outputs, "output", model)
    serving = dict(read_card(repository, model, wanted[-1]).get("serving", {}))
    serving.pop("fp16", None)
    if "preferred_batch_sizes" in serving:
        serving["preferred_batch_sizes"] = tuple(serving["preferred_batch_sizes"])
    options = ServingOptions(**serving)

    def render(kind: str, filename: str = MODEL_FILE) -> str:
        return config_pbtxt(
            model, inputs, outputs, versions=wanted, options=options, kind=kind, model_filename=filename
        )

    _atomic_write_text(model_dir / CONFIGS_DIR / "cpu.pbtxt", render("KIND_CPU"))
    fp16_path = model_dir / CONFIGS_DIR / "fp16.pbtxt"
    if all((model_dir / str(v) / MODEL_FILE_FP16).is_file() for v in wanted):
        _atomic_write_text(fp16_path, render("KIND_GPU", MODEL_FILE_FP16))
    else:
        fp16_path.unlink(missing_ok=True)
    # The default config last: it is what Triton reads, so it changes once everything else is in place.
    _atomic_write_text(model_dir / CONFIG_FILE, render("KIND_GPU"))


# --------------------------------------------------------------------------- validation


def _parse_config(path: Path) -> Any:
    """Parse with Triton's own protobuf schema (tritonclient), so a typo fails here, not in Triton."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _validate_config(path: Path, model_dir: Path, problems: list[str]) -> None:
    where = str(path)
    try:
        config = _parse_config(path)
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
    versions = list_versions(model_dir.parent, model_dir.name)
    if config.version_policy.HasField("specific"):
        served = list(config.version_policy.specific.versions)
        for v in served:
            if v not in versions:
                problems.append(f"{where}: version_policy serves version {v}, which is not on disk")
        served = [v for v in served if v in versions]
    elif config.version_policy.HasField("all"):
        served = versions
    else:  # Triton's default policy: latest 1
        served = versions[-1:]
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
            graph = _load_graph(onnx_path)
            onnx_in, onnx_out = tensor_specs_from_onnx(onnx_path)
        except Exception as exc:
            problems.append(f"{onnx_path}: unreadable ONNX: {exc}")
            continue
        for location in _external_files(graph):
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


def validate_repository(repository: Path) -> list[str]:
    """Every problem Triton would hit loading this repository (empty list = loadable).

    Each ``config.pbtxt`` and ``configs/*.pbtxt`` is parsed with Triton's ModelConfig
    protobuf and compared with the ONNX graphs of the versions it serves; models with
    a serving contract are also checked against it; a champion must exist on disk.
    """
    repository = Path(repository)
    problems: list[str] = []
    if not repository.is_dir():
        return [f"{repository}: not a folder"]
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = model_dir / CONFIG_FILE
        if not config.is_file():
            problems.append(f"{model_dir}: no {CONFIG_FILE}")
            continue
        _validate_config(config, model_dir, problems)
        for variant in sorted((model_dir / CONFIGS_DIR).glob("*.pbtxt")):
            _validate_config(variant, model_dir, problems)
        for v in list_versions(repository, model_dir.name):
            onnx_path = model_dir / str(v) / MODEL_FILE
            if onnx_path.is_file():
                try:
                    problems += [
                        f"version {v}: {p}" for p in check_contract(model_dir.name, *tensor_specs_from_onnx(onnx_path))
                    ]
                except Exception as exc:
                    problems.append(f"{onnx_path}: unreadable ONNX: {exc}")
        try:
            champion = read_champion(repository, model_dir.name)
        except ModelRepositoryError as exc:
            problems.append(str(exc))
            champion = None
        if champion is not None and champion not in list_versions(repository, model_dir.name):
            problems.append(f"{model_dir}: champion version {champion} is not on disk")
    return problems
