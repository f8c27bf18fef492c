"""Embedded scorer: the same ONNX files Triton serves, run in process with onnxruntime.

Models are read from Triton's repository layout,
``<repository>/<model>/<version>/model.onnx`` (with ``model.onnx.data`` beside
it when the exporter used external data — onnxruntime resolves it relative to
the model file, which is why sessions are created from the path, not bytes).

Sessions are cached per (model, version) so a hot swap loads the new version
while the old one keeps serving.  Inference runs on one dedicated thread per
scorer: onnxruntime releases the GIL, so scoring does not stall the event loop,
and one thread with one intra-op thread per process is what a pod of N cores
running N worker processes wants (no oversubscription between the event loop
and inference threads).

A version folder may hold more graphs than ``model.onnx`` (the ranker's candidate graphs,
``scalerec_models.bundle``): ``infer(..., graph=...)`` runs one of those by file name, with its own
session, released with the version.

Micro-batching: requests that arrive while a run is in progress wait for it and
then go together, stacked along the batch axis, in one run (grouped by shape, so
callers that pad to a fixed size merge best).  Nothing waits for a batch to fill:
at low load each request runs alone at once; under load the batch grows by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalerec_adapters.scoring import Scorer, ScorerUnavailable

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"  # the graph Triton serves; a version's other graphs are named by ``graph=``

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


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]


@dataclass
class _Queue:
    """Requests for one (model, version, graph, output names) waiting for the next run."""

    pending: list[_Pending] = field(default_factory=list)
    running: bool = False


class OnnxRuntimeScorer(Scorer):
    name = "onnxruntime"

    def __init__(
        self,
        repository: Path,
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        warm_up: bool = True,
        max_batch_rows: int = 32,
        inline: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.intra_op_threads = intra_op_threads
        self.providers = list(providers)
        self.warm_up = warm_up
        self.max_batch_rows = max(1, max_batch_rows)
        # inline: run on the event loop's thread. For a model that takes well under a millisecond
        # the hop to a thread and back (a GIL hand-over each way) costs more than the model; a
        # process per core (WORKERS) then keeps every core busy. Off for large models, whose runs
        # release the GIL long enough for the loop to serve HTTP meanwhile.
        self.inline = inline
        self._sessions: dict[tuple[str, int, str], Any] = {}  # (model, version, graph file)
        self._outputs: dict[tuple[str, int, str], frozenset[str]] = {}  # each session's output names
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._queues: dict[tuple[str, int, str, tuple[str, ...]], _Queue] = {}
        self.runs = 0  # executions, for tests and benchmarks: fewer than requests when batching merges
        self.requests = 0

    def model_path(self, model: str, version: int, graph: str = MODEL_FILE) -> Path:
        return self.repository / model / str(int(version)) / graph

    def has_graph(self, model: str, version: int, graph: str) -> bool:
        return self.model_path(model, version, graph).is_file()

    def _load(self, model: str, version: int, graph: str = MODEL_FILE) -> Any:
        key = (model, int(version), graph)
        with self._lock:  # one load per key even when many requests arrive for a cold model
            session = self._sessions.get(key)
            if session is not None:
                return session
            path = self.model_path(model, version, graph)
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
            self._outputs[key] = frozenset(o.name for o in session.get_outputs())
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
        """Release every graph of the version."""
        with self._lock:
            for key in [k for k in self._sessions if k[:2] == (model, int(version))]:
                del self._sessions[key]

    def loaded(self) -> list[tuple[str, int]]:
        """(model, version) pairs with a live session."""
        with self._lock:
            return sorted({key[:2] for key in self._sessions})

    def _infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        graph: str = MODEL_FILE,
    ) -> dict[str, np.ndarray]:
        # Loads on first use: the embedded deployment has no separate load step to forget.
        key = (model, int(version), graph)
        session = self._sessions.get(key) or self._load(model, version, graph)
        known = self._outputs[key]  # not session.get_outputs(): it builds new NodeArg objects per call
        missing = [o for o in outputs if o not in known]
        if missing:
            raise ScorerUnavailable(
                f"model {model!r} version {version} ({graph}) has no output(s) {missing}; it has {sorted(known)}"
            )
        try:
            results = session.run(list(outputs), dict(inputs))
        except Exception as exc:
            shapes = {k: (np.asarray(v).dtype.name, np.shape(v)) for k, v in inputs.items()}
            raise ScorerUnavailable(
                f"model {model!r} version {version} ({graph}): inference failed for inputs {shapes}: {exc}"
            ) from exc
        return dict(zip(outputs, results, strict=True))

    def run(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        graph: str = MODEL_FILE,
    ) -> dict[str, np.ndarray]:
        """One run now, on the caller's thread (no batching, not counted in ``runs``): for work outside
        requests, such as encoding items."""
        return self._infer(model, version, inputs, outputs, graph)

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        graph: str = MODEL_FILE,
    ) -> dict[str, np.ndarray]:
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
        self.requests += 1
        if len(rows) != 1 or not all(a.ndim for a in arrays.values()):  # not batchable: run alone
            loop = asyncio.get_running_loop()
            self.runs += 1
            if self.inline:
                return self._infer(model, version, arrays, outputs, graph)
            return await loop.run_in_executor(self._executor, self._infer, model, version, arrays, outputs, graph)
        key = (model, int(version), graph, tuple(outputs))
        queue = self._queues.setdefault(key, _Queue())
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        queue.pending.append(_Pending(arrays, rows.pop(), future))
        if not queue.running:
            queue.running = True
            asyncio.get_running_loop().create_task(self._drain(key, queue))
        return await future

    async def _drain(self, key: tuple[str, int, str, tuple[str, ...]], queue: _Queue) -> None:
        """Run what is pending, in batches of equal shapes, until nothing is left."""
        model, version, graph, outputs = key
        loop = asyncio.get_running_loop()
        try:
            if self.inline:
                await asyncio.sleep(0)  # let the requests parsed in this loop iteration join the batch
            while queue.pending:
                batch: list[_Pending] = []
                rest: list[_Pending] = []
                rows = 0
                first = queue.pending[0]
                shape = {k: v.shape[1:] for k, v in first.inputs.items()}
                for p in queue.pending:
                    same = {k: v.shape[1:] for k, v in p.inputs.items()} == shape
                    if (same and rows + p.rows <= self.max_batch_rows) or not batch:
                        batch.append(p)
                        rows += p.rows
                    else:
                        rest.append(p)
                queue.pending = rest
                if len(batch) == 1:
                    stacked = batch[0].inputs
                else:
                    stacked = {k: np.concatenate([p.inputs[k] for p in batch]) for k in shape}
                self.runs += 1
                try:
                    if self.inline:
                        out = self._infer(model, version, stacked, outputs, graph)
                    else:
                        out = await loop.run_in_executor(
                            self._executor, self._infer, model, version, stacked, outputs, graph
                        )
                except Exception as exc:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                start = 0
                for p in batch:
                    if not p.future.done():
                        p.future.set_result({k: v[start : start + p.rows] for k, v in out.items()})
                    start += p.rows
        finally:
            queue.running = False
            for p in queue.pending:  # only on cancellation: nobody is left to run them
                if not p.future.done():
                    p.future.set_exception(ScorerUnavailable("scorer closed"))
            queue.pending = []

    async def healthy(self) -> bool:
        """Ready when the model repository is there; a missing model is a per-request fallback, not ill health."""
        return self.repository.is_dir()

    async def close(self) -> None:
        with self._lock:
            self._sessions.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
