"""Triton model repository: versions, cards, generated configs, validation — with tiny real ONNX graphs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from scalerec_models import repository as repo
from scalerec_models.repository import (
    RANKER_MODEL,
    ModelRepositoryError,
    ServingOptions,
    TensorSpec,
    check_contract,
    list_versions,
    next_version,
    read_card,
    read_champion,
    read_served_versions,
    remove_version,
    set_served_versions,
    tensor_specs_from_onnx,
    validate_repository,
    write_champion,
    write_model_version,
)
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[3]


def _scorer_onnx(path: Path, *, vocab: int = 64, dim: int = 8, seed: int = 0, external: bool = False) -> Path:
    """A minimal model in the ranker's shape: item ids [B, N] -> scores [B, N] via an embedding table."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    weight = rng.standard_normal((dim,)).astype(np.float32)
    nodes = [
        helper.make_node("Mod", ["items", "vocab"], ["hashed"]),
        helper.make_node("Gather", ["table", "hashed"], ["emb"]),
        helper.make_node("MatMul", ["emb", "weight"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scorer",
        [helper.make_tensor_value_info("items", TensorProto.INT64, ["B", "N"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "N"])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array(vocab, dtype=np.int64), "vocab"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _run(path: Path, items: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"items": items})[0]


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _edited(text: str, edit: Callable[[model_config_pb2.ModelConfig], object]) -> str:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    edit(config)
    return text_format.MessageToString(config)


def test_tensor_specs_drop_the_batch_dim_and_keep_dynamic_dims(tmp_path: Path) -> None:
    inputs, outputs = tensor_specs_from_onnx(_scorer_onnx(tmp_path / "m.onnx"))
    assert inputs == [TensorSpec("items", "int64", (-1,))]
    assert outputs == [TensorSpec("scores", "float32", (-1,))]
    assert inputs[0].triton_dtype == "TYPE_INT64" and outputs[0].triton_dtype == "TYPE_FP32"


def test_versions_count_up_and_skip_staging_and_non_integer_folders(tmp_path: Path) -> None:
    assert list_versions(tmp_path, "m") == [] and next_version(tmp_path, "m") == 1
    onnx_file = _scorer_onnx(tmp_path / "m.onnx")
    assert write_model_version(tmp_path / "r", "m", onnx_file, card={}) == 1
    assert write_model_version(tmp_path / "r", "m", onnx_file, card={}) == 2
    for junk in (".staging-3-abc", "01", "latest"):
        (tmp_path / "r" / "m" / junk).mkdir()
    assert list_versions(tmp_path / "r", "m") == [1, 2]
    assert next_version(tmp_path / "r", "m") == 3
    assert write_model_version(tmp_path / "r", "m", onnx_file, card={}, version=7) == 7
    assert next_version(tmp_path / "r", "m") == 8
    with pytest.raises(ModelRepositoryError, match="immutable"):
        write_model_version(tmp_path / "r", "m", onnx_file, card={}, version=7)


def test_write_model_version_lays_out_files_card_and_configs(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"a": 1}')
    embeddings = tmp_path / "emb.npy"
    np.save(embeddings, np.ones((3, 2), dtype=np.float32))
    card = {"metrics": {"ndcg@10": 0.31}, "data_window": ["2026-11-01", "2026-11-20"], "feature_version": "v3"}
    version = write_model_version(
        tmp_path / "r",
        "m",
        _scorer_onnx(tmp_path / "src.onnx"),
        card=card,
        extra_files={"vocab.json": vocab, "item_embeddings.npy": embeddings},
        max_batch_size=128,
    )
    folder = tmp_path / "r" / "m" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "item_embeddings.npy", "model.onnx", "vocab.json"]
    assert not [p for p in (tmp_path / "r" / "m").iterdir() if p.name.startswith(".")]  # staging renamed away

    saved = read_card(tmp_path / "r", "m", version)
    assert saved["metrics"] == {"ndcg@10": 0.31} and saved["feature_version"] == "v3"
    assert saved["data_window"] == ["2026-11-01", "2026-11-20"]
    assert saved["version"] == 1 and saved["model"] == "m" and saved["created_at"]
    assert saved["inputs"] == [{"name": "items", "dtype": "int64", "dims": [-1]}]
    assert saved["serving"]["max_batch_size"] == 128

    gpu = _parse(tmp_path / "r" / "m" / "config.pbtxt")
    assert gpu.name == "m" and gpu.platform == "onnxruntime_onnx" and gpu.backend == "onnxruntime"
    assert gpu.max_batch_size == 128
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert list(gpu.dynamic_batching.preferred_batch_size) == [32, 64, 128]
    assert gpu.dynamic_batching.max_queue_delay_microseconds > 0
    assert list(gpu.version_policy.specific.versions) == [1]
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.input] == [("items", model_config_pb2.TYPE_INT64, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.output] == [("scores", model_config_pb2.TYPE_FP32, [-1])]
    cpu = _parse(tmp_path / "r" / "m" / "configs" / "cpu.pbtxt")
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert list(cpu.input) == list(gpu.input)
    assert validate_repository(tmp_path / "r") == []


def test_new_version_is_added_to_what_is_served(tmp_path: Path) -> None:
    onnx_file = _scorer_onnx(tmp_path / "m.onnx")
    r = tmp_path / "r"
    write_model_version(r, "m", onnx_file, card={})
    assert read_champion(r, "m") is None
    write_champion(r, "m", 1)
    assert read_champion(r, "m") == 1
    write_model_version(r, "m", onnx_file, card={})
    assert read_served_versions(r, "m") == [1, 2]
    write_model_version(r, "m", onnx_file, card={})
    # The trainer only adds: what stops being served (2 lost the gate) is the evaluator's call, which
    # may be serving 2 in an experiment meanwhile.
    assert read_served_versions(r, "m") == [1, 2, 3]
    set_served_versions(r, "m", [1, 3])
    assert read_served_versions(r, "m") == [1, 3]
    write_champion(r, "m", 3)
    set_served_versions(r, "m", [3])
    assert list(_parse(r / "m" / "config.pbtxt").version_policy.specific.versions) == [3]
    with pytest.raises(ModelRepositoryError, match="not in the repository"):
        write_champion(r, "m", 9)
    with pytest.raises(ModelRepositoryError, match="missing on disk"):
        set_served_versions(r, "m", [3, 9])
    remove_version(r, "m", 2)
    assert list_versions(r, "m") == [1, 3]
    with pytest.raises(ModelRepositoryError, match="champion"):
        remove_version(r, "m", 3)
    assert validate_repository(r) == []


def test_external_data_travels_with_the_version_and_scores_match(tmp_path: Path) -> None:
    source = _scorer_onnx(tmp_path / "exported.onnx", external=True)
    assert (tmp_path / "exported.onnx.data").is_file()
    version = write_model_version(tmp_path / "r", "m", source, card={})
    folder = tmp_path / "r" / "m" / str(version)
    assert (folder / "exported.onnx.data").is_file()
    items = np.arange(12, dtype=np.int64).reshape(3, 4) * 7919
    np.testing.assert_array_equal(_run(folder / "model.onnx", items), _run(source, items))
    assert validate_repository(tmp_path / "r") == []
    (folder / "exported.onnx.data").unlink()
    assert any("external data" in p for p in validate_repository(tmp_path / "r"))


def test_models_over_the_threshold_are_rewritten_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repo, "EXTERNAL_DATA_THRESHOLD", 1000)  # stand-in for protobuf's 2 GiB cap
    source = _scorer_onnx(tmp_path / "big.onnx", vocab=512)
    write_model_version(tmp_path / "r", "m", source, card={})
    folder = tmp_path / "r" / "m" / "1"
    assert (folder / "model.onnx.data").is_file()
    assert (folder / "model.onnx").stat().st_size < source.stat().st_size
    items = np.arange(8, dtype=np.int64).reshape(2, 4)
    np.testing.assert_array_equal(_run(folder / "model.onnx", items), _run(source, items))


def test_fp16_variant_halves_the_table_and_stays_close(tmp_path: Path) -> None:
    source = _scorer_onnx(tmp_path / "m.onnx", vocab=1024, dim=16)
    write_model_version(tmp_path / "r", "m", source, card={}, fp16=True)
    folder = tmp_path / "r" / "m" / "1"
    half = onnx.load(str(folder / "model.fp16.onnx"))
    types = {i.name: i.data_type for i in half.graph.initializer}
    assert types["table__fp16"] == TensorProto.FLOAT16
    assert (folder / "model.fp16.onnx").stat().st_size < 0.6 * (folder / "model.onnx").stat().st_size
    items = np.random.default_rng(0).integers(0, 2**40, (4, 32), dtype=np.int64)
    np.testing.assert_allclose(_run(folder / "model.fp16.onnx", items), _run(source, items), atol=2e-2)
    fp16_config = _parse(tmp_path / "r" / "m" / "configs" / "fp16.pbtxt")
    assert fp16_config.default_model_filename == "model.fp16.onnx"
    assert read_card(tmp_path / "r", "m", 1)["serving"]["fp16"] is True
    assert validate_repository(tmp_path / "r") == []
    # A served version without the fp16 file: the fp16 config would not load, so it is dropped.
    write_model_version(tmp_path / "r", "m", source, card={})
    assert not (tmp_path / "r" / "m" / "configs" / "fp16.pbtxt").exists()


def test_validate_repository_reports_what_triton_would_reject(tmp_path: Path) -> None:
    r = tmp_path / "r"
    write_model_version(r, "m", _scorer_onnx(tmp_path / "m.onnx"), card={})
    config = r / "m" / "config.pbtxt"
    good = config.read_text()

    config.write_text(good.replace("TYPE_INT64", "TYPE_INT32"))
    assert any("int32 in the config, int64" in p for p in validate_repository(r))
    config.write_text(good.replace('name: "items"', 'name: "item_ids"'))
    problems = validate_repository(r)
    assert any("'item_ids' is not in version 1" in p for p in problems)
    assert any("['items'] are not in the config" in p for p in problems)
    config.write_text(_edited(good, lambda c: c.version_policy.specific.versions.append(4)))
    assert any("version 4, which is not on disk" in p for p in validate_repository(r))
    config.write_text(good.replace("max_batch_size: 256", "max_batch_size: 256\nmax_batchsize: 3"))
    assert any("not a valid Triton ModelConfig" in p for p in validate_repository(r))
    config.write_text(_edited(good, lambda c: c.input[0].dims.append(2)))
    assert any("dims" in p for p in validate_repository(r))
    config.write_text(good)
    (r / "m" / "champion").write_text("7\n")
    assert any("champion version 7" in p for p in validate_repository(r))


def test_contract_is_enforced_for_the_ranker(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match="history"):
        write_model_version(tmp_path / "r", RANKER_MODEL, _scorer_onnx(tmp_path / "m.onnx"), card={})
    assert list_versions(tmp_path / "r", RANKER_MODEL) == []
    assert check_contract("not_a_contract_model", [], []) == []


def test_a_ranker_versions_candidate_graphs_are_held_to_their_contracts(tmp_path: Path) -> None:
    """The extra graphs a ranker version carries for in-process scoring are checked like the model itself."""
    committed = ROOT / "model_repository"
    ranker = committed / RANKER_MODEL / str(read_champion(committed, RANKER_MODEL)) / repo.MODEL_FILE
    tower = next((committed / repo.USER_TOWER_MODEL).glob(f"[0-9]*/{repo.MODEL_FILE}"))
    with pytest.raises(ModelRepositoryError, match=r"candidate_encoder.onnx: .*'candidate_vectors' missing"):
        write_model_version(
            tmp_path / "r", RANKER_MODEL, ranker, card={}, extra_files={"candidate_encoder.onnx": tower}
        )
    assert list_versions(tmp_path / "r", RANKER_MODEL) == []
    # Another model's extra files are its own business.
    assert (
        write_model_version(
            tmp_path / "r",
            "m",
            _scorer_onnx(tmp_path / "m.onnx"),
            card={},
            extra_files={"candidate_encoder.onnx": tower},
        )
        == 1
    )


def test_a_failed_write_leaves_no_version_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_model_version(
            tmp_path / "r", "m", _scorer_onnx(tmp_path / "m.onnx"), card={}, extra_files={"x.json": tmp_path / "nope"}
        )
    assert list_versions(tmp_path / "r", "m") == []
    assert not [p for p in (tmp_path / "r" / "m").iterdir() if p.name.startswith(".staging")]


def test_config_options_round_trip_through_the_card(tmp_path: Path) -> None:
    options = ServingOptions(max_batch_size=64, preferred_batch_sizes=(8, 64, 512), max_queue_delay_microseconds=100)
    write_model_version(tmp_path / "r", "m", _scorer_onnx(tmp_path / "m.onnx"), card={}, options=options)
    set_served_versions(tmp_path / "r", "m", [1])  # regenerated from the card, not from defaults
    config = _parse(tmp_path / "r" / "m" / "config.pbtxt")
    assert config.max_batch_size == 64
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert json.loads((tmp_path / "r" / "m" / "1" / "card.json").read_text())["serving"]["max_batch_size"] == 64


def test_committed_model_repository_is_valid_and_follows_the_contract() -> None:
    committed = ROOT / "model_repository"
    assert validate_repository(committed) == []
    assert list_versions(committed, RANKER_MODEL)
    champion = read_champion(committed, RANKER_MODEL)
    assert champion in list_versions(committed, RANKER_MODEL)
    total = sum(f.stat().st_size for f in committed.rglob("*") if f.is_file())
    assert total < 1_000_000, f"the committed example repository is {total} bytes; keep it under 1 MB"
    assert all(os.access(f, os.R_OK) for f in committed.rglob("*"))


def test_integrity_digests_catch_a_changed_missing_or_added_file(tmp_path: Path) -> None:
    from scalerec_models.integrity import IntegrityError, file_digests, verify_files

    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    (folder / "vocab.json").write_text("{}")
    card = {"sha256": file_digests(folder)}
    verify_files(folder, card)
    (folder / "model.onnx").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match=r"model\.onnx does not match"):
        verify_files(folder, card)
    (folder / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match=r"model\.onnx is missing"):
        verify_files(folder, card)
    with pytest.raises(IntegrityError, match="no sha256"):
        verify_files(folder, {})


def _concatenated_config(
    model: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    versions: list[int],
    options: ServingOptions,
    kind: str,
    model_filename: str,
    backend: str,
) -> str:
    """How config.pbtxt was written before it was built as a ModelConfig protobuf (string concatenation),
    kept as the reference the protobuf rendering must equal once parsed."""

    def block(key: str, specs: list[TensorSpec]) -> str:
        rows = [
            f'  {{\n    name: "{t.name}"\n    data_type: {t.triton_dtype}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}'
            for t in specs
        ]
        return f"{key} [\n" + ",\n".join(rows) + "\n]\n"

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
    text = "\n".join(head) + "\n" + f"max_batch_size: {options.max_batch_size}\n"
    text += f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, sorted(set(versions))))} ] }} }}\n"
    text += block("input", inputs) + block("output", outputs)
    text += f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"
    if options.max_batch_size > 0:
        text += (
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, options.preferred()))} ]\n"
            f"  max_queue_delay_microseconds: {options.max_queue_delay_microseconds}\n}}\n"
        )
    return text


@pytest.mark.parametrize(
    ("options", "kind", "model_filename", "backend"),
    [
        (ServingOptions(), "KIND_GPU", "model.onnx", "onnxruntime"),
        (
            ServingOptions(max_batch_size=64, preferred_batch_sizes=(8, 64), cpu_instances=3),
            "KIND_CPU",
            "model.onnx",
            "onnxruntime",
        ),
        (
            ServingOptions(max_queue_delay_microseconds=100, gpu_instances=2),
            "KIND_GPU",
            "model.fp16.onnx",
            "onnxruntime",
        ),
        (ServingOptions(max_batch_size=0), "KIND_CPU", "model.onnx", "python"),
    ],
)
def test_the_protobuf_config_parses_to_what_string_concatenation_wrote(
    options: ServingOptions, kind: str, model_filename: str, backend: str
) -> None:
    from scalerec_features.serving import RANKER

    inputs = [*RANKER.inputs, TensorSpec("flags", "bool", ()), TensorSpec("half", "float16", (2, -1, 3))]
    args = dict(versions=[3, 1, 3], options=options, kind=kind, model_filename=model_filename, backend=backend)
    new = repo.config_pbtxt(RANKER.model, inputs, list(RANKER.outputs), **args)
    old = _concatenated_config(RANKER.model, inputs, list(RANKER.outputs), **args)
    assert text_format.Parse(new, model_config_pb2.ModelConfig()) == text_format.Parse(
        old, model_config_pb2.ModelConfig()
    )


def test_a_version_has_arrived_only_with_its_card_and_every_file_it_names(tmp_path: Path) -> None:
    """A mirror of object storage copies a version file by file: readers wait until all of it is there."""
    import shutil
    from datetime import UTC, datetime, timedelta

    written = tmp_path / "written"
    write_model_version(written, "m", _scorer_onnx(tmp_path / "m.onnx"), card={})
    card = read_card(written, "m", 1)
    assert card["sha256"], "the card names the version's files"
    mirror = tmp_path / "mirror"
    assert not repo.version_arrived(mirror, "m", 1)  # nothing copied yet
    (mirror / "m" / "1").mkdir(parents=True)
    shutil.copy(written / "m" / "1" / repo.CARD_FILE, mirror / "m" / "1")
    assert not repo.version_arrived(mirror, "m", 1)  # the card, not yet the model
    (mirror / "m" / "1" / repo.CARD_FILE).write_text('{"sha2')  # a card half-written
    assert not repo.version_arrived(mirror, "m", 1)
    shutil.rmtree(mirror / "m" / "1")
    shutil.copytree(written / "m" / "1", mirror / "m" / "1")
    assert repo.version_arrived(mirror, "m", 1)

    # A version of two models (the trainer lists them in the card): here only when both are.
    tower = _scorer_onnx(tmp_path / "tower.onnx", seed=1)
    card = {repo.VERSION_MODELS_KEY: ["t", "m"]}
    write_model_version(written, "t", tower, card=card, version=2)
    write_model_version(written, "m", _scorer_onnx(tmp_path / "m2.onnx"), card=card, version=2)
    shutil.copytree(written / "m" / "2", mirror / "m" / "2")
    assert not repo.version_arrived(mirror, "m", 2)  # the mirror copied m's folder first
    (mirror / "t" / "2").mkdir(parents=True)
    shutil.copy(written / "t" / "2" / repo.CARD_FILE, mirror / "t" / "2")
    assert not repo.version_arrived(mirror, "m", 2)  # the tower's card, not its model yet
    shutil.copytree(written / "t" / "2", mirror / "t" / "2", dirs_exist_ok=True)
    assert repo.version_arrived(mirror, "m", 2)

    now = datetime.now(UTC)
    assert not repo.still_arriving(mirror, "m", 1, now)  # here: nothing to wait for
    assert repo.still_arriving(mirror, "m", 3, now)  # announced just now, not here yet
    late = now - timedelta(seconds=repo.WAIT_FOR_ARRIVAL_S + 1)
    assert not repo.still_arriving(mirror, "m", 3, late)  # waited long enough: fail as before
