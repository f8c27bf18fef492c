"""A model's Triton ``config.pbtxt``, built as Triton's ``ModelConfig`` protobuf from its tensor specs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec

from scalerec_features.serving import TensorSpec

from scalerec_models.onnx_graph import ModelRepositoryError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

P = ParamSpec("P")

MODEL_FILE = "model.onnx"  # Triton's default file name for the onnxruntime backend
CONFIG_FILE = "config.pbtxt"
CONFIGS_DIR = "configs"  # variants picked with --model-config-name


@dataclass(frozen=True)
class ServingOptions:
    """How a model is served; stored in each version's card so configs can be regenerated."""

    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 500
    gpu_instances: int = 1
    cpu_instances: int = 1

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ServingOptions:
        """The options a version's card recorded (its ``serving`` block; defaults where absent)."""
        serving = dict(card.get("serving", {}))
        serving.pop("fp16", None)
        if "preferred_batch_sizes" in serving:
            serving["preferred_batch_sizes"] = tuple(serving["preferred_batch_sizes"])
        return cls(**serving)

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


def merge_specs(per_version: list[list[TensorSpec]], what: str, model: str) -> list[TensorSpec]:
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


def model_config(
    model: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    versions: Iterable[int],
    options: ServingOptions = ServingOptions(),
    kind: str = "KIND_GPU",
    model_filename: str = MODEL_FILE,
    backend: str = "onnxruntime",
) -> ModelConfig:
    """Triton's ``ModelConfig`` for an ONNX model.

    ``backend="python"`` gives the same schema for a Python-backend model (used by the
    tests and by deployments whose Triton build lacks the onnxruntime backend).
    """
    from tritonclient.grpc import model_config_pb2 as pb

    served = sorted(set(versions))
    if not served:
        raise ModelRepositoryError(f"{model}: a config must serve at least one version")
    config = pb.ModelConfig(name=model, max_batch_size=options.max_batch_size)
    if backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = model_filename
    config.backend = backend
    config.version_policy.specific.versions.extend(served)
    try:
        for spec in inputs:
            config.input.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_dtype), dims=spec.dims)
        for spec in outputs:
            config.output.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_dtype), dims=spec.dims)
    except ValueError as exc:
        raise ModelRepositoryError(f"{model}: {exc}") from None
    count = options.gpu_instances if kind == "KIND_GPU" else options.cpu_instances
    config.instance_group.add(count=count, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    if options.max_batch_size > 0:
        config.dynamic_batching.preferred_batch_size.extend(options.preferred())
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    return config


def _as_text(build: Callable[P, ModelConfig]) -> Callable[P, str]:
    def text(*args: P.args, **kwargs: P.kwargs) -> str:
        from google.protobuf import text_format

        return text_format.MessageToString(build(*args, **kwargs))

    text.__doc__ = f"Text of a Triton ``config.pbtxt`` (protobuf text format) of :func:`{build.__name__}`."
    return text


# Same arguments as model_config; what set_served_versions writes and tests read.
config_pbtxt = _as_text(model_config)


def parse_config(text: str) -> ModelConfig:
    """Parse with Triton's own protobuf schema (tritonclient), so a typo fails here, not in Triton."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


def served_versions(config: ModelConfig) -> list[int]:
    """The versions a ``specific`` version policy names ([] for any other policy)."""
    if not config.version_policy.HasField("specific"):
        return []
    return sorted(config.version_policy.specific.versions)
