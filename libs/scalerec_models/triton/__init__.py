"""Triton's side of the model repository: ``config.pbtxt`` rendering, parsing and validation.

``config`` builds Triton's own ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``)
and prints it with ``text_format``, so a config written here is one Triton can parse by
construction; ``validation`` checks a config against the ONNX graphs it serves.  tritonclient
is imported when a config is built or read, never at import time: the ranker's in-process
scorer reads the repository without it.  ``scalerec_models.repository`` re-exports both.
"""
