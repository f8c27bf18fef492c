"""Triton model repository: versioned ONNX models, model cards and generated ``config.pbtxt``.

Layout (Triton's, so a Triton server can point straight at the folder)::

    <repository>/<model>/config.pbtxt            GPU config, onnxruntime backend (generated)
    <repository>/<model>/configs/cpu.pbtxt       same model on KIND_CPU (``--model-config-name=cpu``)
    <repository>/<model>/configs/fp16.pbtxt      only when every served version has an fp16 variant
    <repository>/<model>/champion                the evaluator's champion version (one integer)
    <repository>/<model>/<N>/model.onnx          + model.onnx.data (external weights) when present
    <repository>/<model>/<N>/card.json           model card: metrics, data window, feature version, schema
    <repository>/<model>/<N>/...                 extra files (vocab.json, item_embeddings.npy, ...)
    <repository>/<model>/.pruned-<N>             version N was deleted (retention): for object-storage mirrors

Why it is generated, never hand-written: the config must agree with the ONNX graph
(names, dtypes, dims), and a mismatch only shows up when Triton refuses to load the
model in production.  So the config is derived from the graph, and
:func:`validate_repository` re-checks it with Triton's own protobuf schema.

Writes are atomic: a version is assembled in a hidden staging folder (Triton ignores
folders whose name is not an integer) and renamed into place; configs and the
champion file are replaced with ``os.replace``.  A reader (Triton, the ranker's
embedded scorer, the evaluator) never sees half a version.

This module owns the folders, versions, cards and the champion file.  The jobs around
it live next door and are re-exported here, so ``from scalerec_models import repository``
keeps working: the serving contract (:mod:`scalerec_features.serving`), reading ONNX
graphs (:mod:`scalerec_models.onnx_graph`), the fp16 variant (:mod:`scalerec_models.fp16`),
and rendering and validating Triton configs (:mod:`scalerec_models.triton`).

It needs numpy and onnx only at import time (no torch, no tritonclient), so the trainer, the
evaluator and the ranker can all import it; writing or reading a ``config.pbtxt`` needs
tritonclient (its ``ModelConfig`` protobuf).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
from scalerec_features.serving import (
    CANDIDATE_ENCODER,
    RANKER_MODEL,
    RANKER_ON_VECTORS,
    SERVING_CONTRACTS,
    USER_STATES,
    USER_TOWER_MODEL,
    ServingContract,
    TensorSpec,
    check_contract,
    contract_problems,
)

from scalerec_models.bundle import CANDIDATE_ENCODER_FILE, RANKER_ON_VECTORS_FILE, USER_STATES_FILE
from scalerec_models.fp16 import convert_to_fp16
from scalerec_models.integrity import DIGESTS_KEY, file_digests
from scalerec_models.onnx_graph import (
    EXTERNAL_DATA_THRESHOLD,
    ModelRepositoryError,
    external_files,
    load_graph,
    tensor_specs_from_onnx,
)
from scalerec_models.triton.config import (
    CONFIG_FILE,
    CONFIGS_DIR,
    MODEL_FILE,
    ServingOptions,
    config_pbtxt,
    merge_specs,
    parse_config,
    served_versions,
)
from scalerec_models.triton.validation import validate_config

__all__ = [
    "CARD_FILE",
    "CHAMPION_FILE",
    "MODEL_FILE",
    "MODEL_FILE_FP16",
    "RANKER_MODEL",
    "SERVING_CONTRACTS",
    "USER_TOWER_MODEL",
    "VERSION_MODELS_KEY",
    "ModelRepositoryError",
    "ServingOptions",
    "TensorSpec",
    "check_contract",
    "config_pbtxt",
    "convert_to_fp16",
    "list_versions",
    "next_version",
    "pruned_marker",
    "read_card",
    "read_champion",
    "read_served_versions",
    "remove_version",
    "set_served_versions",
    "still_arriving",
    "tensor_specs_from_onnx",
    "validate_repository",
    "version_arrived",
    "write_champion",
    "write_model_version",
]

MODEL_FILE_FP16 = "model.fp16.onnx"
CARD_FILE = "card.json"
CHAMPION_FILE = "champion"
PRUNED_PREFIX = ".pruned-"  # <model>/.pruned-<N>: version N was deleted (retention), for object-storage mirrors


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


# The card's key listing every model a training run wrote under the version (the trainer sets it):
# a version has arrived only when each of them has.
VERSION_MODELS_KEY = "version_models"


def _arrived_card(repository: Path, model: str, version: int) -> dict[str, Any] | None:
    """``model``'s card for ``version`` when it and every file its digests name are here, else None."""
    folder = _model_dir(repository, model) / str(version)
    try:
        card = json.loads((folder / CARD_FILE).read_text())
    except (OSError, ValueError):  # not copied yet, or half-copied
        return None
    if not isinstance(card, dict):
        return None
    digests = card.get(DIGESTS_KEY)
    if isinstance(digests, dict) and not all((folder / name).is_file() for name in digests):
        return None
    return card  # a card without digests: nothing to wait for (serving refuses it)


def version_arrived(repository: Path, model: str, version: int) -> bool:
    """Whether ``version`` of ``model`` is all here: its card, every file the card's digests name, and the
    same for every other model the card says the run wrote (``VERSION_MODELS_KEY``: the user tower).

    Where the repository is a mirror of object storage (the chart's ``modelRepository.type=objectStorage``),
    an announcement can come before the sync loops have copied the version, and a mirror copies files in
    any order (the ranker's folder may be complete while the tower's is not): readers wait for this
    instead of failing on a card or file that is still on its way.  Sizes and digests are checked when the
    version is served (``integrity.verify_files``), not here.
    """
    card = _arrived_card(repository, model, version)
    if card is None:
        return False
    others = card.get(VERSION_MODELS_KEY, ())
    return all(_arrived_card(repository, m, version) is not None for m in others if isinstance(m, str) and m != model)


# How long after its announcement a version that has not arrived is waited for (object storage's sync
# loops copy every 60 s by default); after that the reader fails on it as on any missing version.
WAIT_FOR_ARRIVAL_S = 600.0


def still_arriving(repository: Path, model: str, version: int, announced_at: datetime) -> bool:
    """True while ``version`` is not all here and was announced less than ``WAIT_FOR_ARRIVAL_S`` ago."""
    if version_arrived(repository, model, version):
        return False
    return (datetime.now(UTC) - announced_at).total_seconds() < WAIT_FOR_ARRIVAL_S


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


# The extra ONNX graphs a version of a model may carry (for in-process scoring), checked like the model.
EXTRA_GRAPH_CONTRACTS: dict[str, dict[str, ServingContract]] = {
    RANKER_MODEL: {
        CANDIDATE_ENCODER_FILE: CANDIDATE_ENCODER,
        RANKER_ON_VECTORS_FILE: RANKER_ON_VECTORS,
        USER_STATES_FILE: USER_STATES,
    }
}


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
    graph = load_graph(source)
    external = external_files(graph)
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
        graph_contract = EXTRA_GRAPH_CONTRACTS.get(model, {}).get(name)
        if graph_contract is not None:
            problems = contract_problems(graph_contract, *tensor_specs_from_onnx(Path(extra_files[name])))
            if problems:
                raise ModelRepositoryError(f"{name}: " + "; ".join(problems))

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
            DIGESTS_KEY: file_digests(staging, exclude={CARD_FILE}),
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
        # Added to what is served (the champion and any experiment's versions: the evaluator decides
        # those, and narrows the policy again once the candidate is judged), never replacing it.
        champion = read_champion(repository, model)
        served_versions = {version} | set(read_served_versions(repository, model)) | ({champion} if champion else set())
    set_served_versions(repository, model, served_versions)
    return version


def remove_version(repository: Path, model: str, version: int) -> None:
    """Delete a version that is neither champion nor served (retention); unload it from Triton first."""
    if version == read_champion(repository, model):
        raise ModelRepositoryError(f"{model}: version {version} is the champion")
    if version in read_served_versions(repository, model):
        raise ModelRepositoryError(f"{model}: version {version} is in the config's version_policy; unserve it first")
    folder = _model_dir(repository, model) / str(version)
    # The marker first: object-storage mirrors only copy (docs/kubernetes.md, "Model repository"), so without it
    # the bucket would keep the version and bring it back. Version numbers are never reused, so it never
    # names a later version. Hidden, like staging folders: Triton and list_versions skip it.
    _atomic_write_text(pruned_marker(repository, model, version), f"{int(time.time() * 1000)}\n")
    # Rename first so a reader never sees a half-deleted version folder.
    doomed = folder.with_name(f".deleting-{version}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed)


def pruned_marker(repository: Path, model: str, version: int) -> Path:
    """The file that says ``version`` of ``model`` was deleted on purpose (see :func:`remove_version`)."""
    return _model_dir(repository, model) / f"{PRUNED_PREFIX}{version}"


# --------------------------------------------------------------------------- configs


def read_served_versions(repository: Path, model: str) -> list[int]:
    """The versions in ``config.pbtxt``'s ``version_policy`` ([] when there is no config yet)."""
    path = _model_dir(repository, model) / CONFIG_FILE
    if not path.is_file():
        return []
    return served_versions(parse_config(path.read_text()))


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
    inputs = merge_specs(all_inputs, "input", model)
    outputs = merge_specs(all_outputs, "output", model)
    options = ServingOptions.from_card(read_card(repository, model, wanted[-1]))

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
        versions = list_versions(repository, model_dir.name)
        for path in (config, *sorted((model_dir / CONFIGS_DIR).glob("*.pbtxt"))):
            validate_config(path, model_dir, versions, problems)
        for v in versions:
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
        if champion is not None and champion not in versions:
            problems.append(f"{model_dir}: champion version {champion} is not on disk")
    return problems
