"""Triton's side of the model repository: ``config.pbtxt`` rendering, parsing and validation.

Configs are built as Triton's own ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``)
and printed with ``text_format``, so a config this package writes is one Triton can parse by
construction.  tritonclient is imported when a config is built or read, never at import time:
the ranker's in-process scorer reads the repository without it.
"""

from scalerec_models.triton.config import (
    CONFIG_FILE,
    CONFIGS_DIR,
    MODEL_FILE,
    ServingOptions,
    config_pbtxt,
    merge_specs,
    model_config,
    parse_config,
    served_versions,
)
from scalerec_models.triton.validation import validate_config

__all__ = [
    "CONFIGS_DIR",
    "CONFIG_FILE",
    "MODEL_FILE",
    "ServingOptions",
    "config_pbtxt",
    "merge_specs",
    "model_config",
    "parse_config",
    "served_versions",
    "validate_config",
]
