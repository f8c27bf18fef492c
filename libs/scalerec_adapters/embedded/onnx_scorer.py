"""Embedded scorer: the same ONNX files Triton serves, run in process with onnxruntime.

Models are read from Triton's repository layout,
``<repository>/<model>/<version>/model.onnx`` (with ``model.onnx.data`` beside
it when the exporter used external data — onnxruntime resolves it relative to
the model file, which is why sessions are created from the path, not bytes).

Sessions are cached per (model, version) so a hot swap loads the new version
while the old one keeps serving.  ``infer`` runs in a worker thread: onnxruntime
releases the GIL, so scoring does not stall the event loop.  Threads per
session default to 1 because the services share few cores and parallelism
comes from concurrent requests, not from splitting one small batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_adapters.scoring import Scorer, ScorerUnavailable

log = logging.getLogger(__name__)

_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeScorer(Scorer):
    name = "onnxruntime"

    def __init__(
        self,
        repository: Path,
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        warm_up: bool = True,
    ) -> None:
        self.repository = Path(repository)
        self.intra_op_threads = intra_op_threads
        self.providers = list(providers)
        self.warm_up = warm_up
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def model_path(self, model: str, version: int) -> Path:
        return self.repository / model / str(int(version)) / "model.onnx"

    def _load(self, model: str, version: int) -> Any:
        key = (model, int(version))
        with self._lock:  # one load per key even when many requests arrive for a cold model
            session = self._sessions.get(key)
            if session is not None:
                return session
            path = self.model_path(model, version)
            if not path.is_file():
                raise ScorerUnavailable(f"model {model!r} version {version}: no file at {path}")
            import onnxruntime as ort  # lazy: services that never score do not pay for the import

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.intra_op_threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            try:
                session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
            except Exception as exc:
                raise ScorerUnavailable(f"model {model!r} version {version}: cannot load {path}: {exc}") from exc
            if self.warm_up:
                self._warm_up(model, version, session)
            self._sessions[key] = session
            log.info("loaded model %s version %s from %s", model, version, path)
            return session

    @staticmethod
    def _warm_up(model: str, version: int, session: Any) -> None:
        """One batch-1 run of zeros so the first real request does not pay for lazy allocations.

        Done only when every input's shape is known apart from dynamic dims (taken as 1)
        and its type is a plain numeric one; a failure is logged, not fatal: zeros may be
        out of a model's domain while real inputs are fine.
        """
        feeds: dict[str, np.ndarray] = {}
        for inp in session.get_inputs():
            dtype = _ORT_DTYPES.get(inp.type)
            if dtype is None:
                return
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
        try:
            session.run(None, feeds)
        except Exception as exc:
            log.warning("warm-up of model %s version %s failed (serving anyway): %s", model, version, exc)

    async def load(self, model: str, version: int) -> None:
        await asyncio.to_thread(self._load, model, version)

    async def unload(self, model: str, version: int) -> None:
        with self._lock:
            self._sessions.pop((model, int(version)), None)

    def loaded(self) -> list[tuple[str, int]]:
        """(model, version) pairs with a live session."""
        with self._lock:
            return sorted(self._sessions)

    def _infer(
        self, model: str, version: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        # Loads on first use: the embedded deployment has no separate load step to forget.
        session = self._sessions.get((model, int(version))) or self._load(model, version)
        known = {o.name for o in session.get_outputs()}
        missing = [o for o in outputs if o not in known]
        if missing:
            raise ScorerUnavailable(
                f"model {model!r} version {version} has no output(s) {missing}; it has {sorted(known)}"
            )
        try:
            results = session.run(list(outputs), {k: np.asarray(v) for k, v in inputs.items()})
        except Exception as exc:
            shapes = {k: (np.asarray(v).dtype.name, np.shape(v)) for k, v in inputs.items()}
            raise ScorerUnavailable(
                f"model {model!r} version {version}: inference failed for inputs {shapes}: {exc}"
            ) from exc
        return dict(zip(outputs, results, strict=True))

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self._infer, model, version, inputs, outputs)

    async def healthy(self) -> bool:
        """Ready when the model repository is there; a missing model is a per-request fallback, not ill health."""
        return self.repository.is_dir()

    async def close(self) -> None:
        with self._lock:
            self._sessions.clear()
