"""Model scorer interface: run a named model version on named input tensors.

Production runs Triton (gRPC, dynamic batching, GPU); the embedded scorer runs
the same ONNX file with onnxruntime in process.  Model files follow Triton's
repository layout: ``<repository>/<model>/<version>/model.onnx``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np


class ScorerUnavailable(RuntimeError):
    """The scorer could not answer (down, overloaded, model not loaded); callers fall back."""


class Scorer(ABC):
    name: str = "scorer"

    @abstractmethod
    async def load(self, model: str, version: int) -> None:
        """Make ``model``/``version`` ready to serve (and warm it up)."""

    @abstractmethod
    async def unload(self, model: str, version: int) -> None: ...

    @abstractmethod
    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Raise ScorerUnavailable when the model cannot be run right now."""

    async def infer_with_backend(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> tuple[dict[str, np.ndarray], str]:
        """``infer`` plus the name of the backend that answered (a fallback chain overrides this)."""
        return await self.infer(model, version, inputs, outputs), self.name

    async def healthy(self) -> bool:
        return True

    @abstractmethod
    async def close(self) -> None: ...
