"""Ranking-model scoring throughput and latency on a GPU, next to the memory-bandwidth floor.

What it measures, per batch size (default 1, 2, 4, ... 4096 user rows, each scoring
``--candidates`` items over a ``--history-len`` history):

* **eager**      plain PyTorch, ``torch.inference_mode``;
* **cudagraph**  the same model captured once per batch size in a CUDA graph (removes
                 Python and kernel-launch overhead, which dominates small batches);
* **inductor**   ``torch.compile`` (opt-in with ``--compile inductor``: minutes of compile time);
* **triton**     a running Triton server (``--triton-url host:8001``) serving a model with
                 the ScaleRec ranking contract — export this benchmark's model for it with
                 ``--export-repository DIR`` so its floor column is meaningful;
* **floor**      the time the GPU needs just to *read* what one batch must touch — the
                 embedding rows gathered (history, candidates, candidate features, context)
                 plus every dense weight once — at the device-to-device copy bandwidth
                 measured on this card.  Scoring is memory-bound, so ``floor / p50`` says
                 how close a backend gets to the hardware.

Throughput is samples (user rows) per second of back-to-back serial calls; p50/p99 are
per-call latencies (host clock around a synchronised call, i.e. what a caller sees).

The model is built here (a transformer over the history with a large hashed item
embedding table and multi-task heads) so the benchmark runs without the trainer.
It runs on CPU too, for a smoke run::

    .venv/bin/python benchmarks/gpu_scoring.py --device cpu --batch-sizes 1,8 \\
        --embedding-rows 1000 --dim 32 --layers 1 --iters 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = ",".join(str(2**i) for i in range(13))  # 1 .. 4096
FEATURES_PER_CANDIDATE = 10
CONTEXT_FIELDS = 4


@dataclass(frozen=True)
class Row:
    backend: str
    batch: int
    samples_per_s: float
    p50_ms: float
    p99_ms: float
    floor_ms: float

    @property
    def floor_fraction(self) -> float:
        return self.floor_ms / self.p50_ms if self.p50_ms > 0 else math.nan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCHES, help=f"comma-separated (default {DEFAULT_BATCHES})")
    p.add_argument("--history-len", type=int, default=50)
    p.add_argument("--candidates", type=int, default=16, help="candidates scored per user row")
    p.add_argument("--embedding-rows", type=int, default=10_000_000, help="hashed item-embedding rows")
    p.add_argument("--feature-rows", type=int, default=1_000_000, help="hashed candidate-feature rows")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument(
        "--compile",
        choices=["none", "cudagraph", "inductor"],
        default=None,
        help="second torch backend (default: cudagraph on CUDA, none on CPU)",
    )
    p.add_argument("--iters", type=int, default=50, help="timed calls per batch size (at least)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per batch size (at least)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="size of the copy that measures bandwidth")
    p.add_argument("--triton-url", default=None, help="gRPC address of a running Triton (host:8001)")
    p.add_argument("--triton-model", default="scalerec_ranker")
    p.add_argument("--triton-version", default="")
    p.add_argument(
        "--triton-local",
        action="store_true",
        help="start the nvidia-pytriton tritonserver (Python backend running onnxruntime) on --export-repository",
    )
    p.add_argument("--export-repository", type=Path, default=None, help="write this model as a Triton model version")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(args: argparse.Namespace) -> Any:
    """A SASRec-style ranker: transformer over the history, hashed embeddings, click/conversion heads."""
    import torch
    from torch import nn

    class BenchRanker(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = args.dim
            self.item_rows, self.feature_rows = args.embedding_rows, args.feature_rows
            self.items = nn.Embedding(args.embedding_rows, d)
            self.features = nn.Embedding(args.feature_rows, d)
            self.context = nn.Embedding(1024, d)
            self.position = nn.Embedding(args.history_len, d)
            layer = nn.TransformerEncoderLayer(d, args.heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
            self.head = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, 2))

        def forward(
            self,
            history: torch.Tensor,
            context: torch.Tensor,
            candidates: torch.Tensor,
            candidate_features: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            positions = torch.arange(history.shape[1], device=history.device)
            h = self.items(history % self.item_rows) + self.position(positions)
            user = self.encoder(h)[:, -1] + self.context(context % 1024).sum(1)  # [B, D]
            item = self.items(candidates % self.item_rows) + self.features(candidate_features % self.feature_rows).mean(
                2
            )  # [B, N, D]
            user_n = user[:, None, :].expand_as(item)
            logits = self.head(torch.cat([user_n * item, item, user_n], dim=-1))  # [B, N, 2]
            p_click = torch.sigmoid(logits[..., 0])
            p_conversion = torch.sigmoid(logits[..., 1])
            return p_click + 0.5 * p_conversion, p_click, p_conversion

    torch.manual_seed(args.seed)
    return BenchRanker().eval()


def make_inputs(args: argparse.Namespace, batch: int, device: Any) -> tuple[Any, ...]:
    import torch

    g = torch.Generator(device="cpu").manual_seed(args.seed + batch)
    n, L = args.candidates, args.history_len
    tensors = (
        torch.randint(0, 2**62, (batch, L), generator=g),
        torch.randint(0, 1024, (batch, CONTEXT_FIELDS), generator=g),
        torch.randint(0, 2**62, (batch, n), generator=g),
        torch.randint(0, 2**62, (batch, n, FEATURES_PER_CANDIDATE), generator=g),
    )
    return tuple(t.to(device) for t in tensors)


def floor_bytes(args: argparse.Namespace, model: Any, batch: int, element_size: int) -> int:
    """Bytes one batch must read at least: gathered embedding rows + each dense weight once."""
    rows = batch * (args.history_len + args.candidates + args.candidates * FEATURES_PER_CANDIDATE + CONTEXT_FIELDS)
    tables = {id(model.items.weight), id(model.features.weight), id(model.context.weight)}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in tables)
    return (rows * args.dim + dense) * element_size


def measure_bandwidth(device: Any, mib: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), the card's practical memory bandwidth."""
    import torch

    n = mib * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync = _synchronizer(device)
    sync()
    repeats = 10
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync()
    elapsed = time.perf_counter() - start
    return 2 * src.numel() * src.element_size() * repeats / elapsed


def _synchronizer(device: Any) -> Callable[[], None]:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[], Any], sync: Callable[[], None], args: argparse.Namespace) -> list[float]:
    for _ in range(args.warmup):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < args.iters or time.perf_counter() - started < args.min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 100 * args.iters:
            break
    return times


def summarise(backend: str, batch: int, times: list[float], floor_s: float) -> Row:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return Row(
        backend=backend,
        batch=batch,
        samples_per_s=batch / statistics.fmean(times),
        p50_ms=statistics.median(times) * 1e3,
        p99_ms=p99 * 1e3,
        floor_ms=floor_s * 1e3,
    )


def cuda_graph_runner(model: Any, inputs: tuple[Any, ...]) -> Callable[[], Any]:
    """Capture one forward pass for these input shapes; replays cost one launch."""
    import torch

    static = tuple(t.clone() for t in inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        outputs = model(*static)

    def run() -> Any:
        graph.replay()
        return outputs

    return run


def triton_runner(args: argparse.Namespace, inputs: tuple[Any, ...]) -> Callable[[], Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(args.triton_url)
    names = ("history", "context", "candidates", "candidate_features")
    request = []
    for name, tensor in zip(names, inputs, strict=True):
        array = tensor.cpu().numpy()
        item = grpcclient.InferInput(name, list(array.shape), "INT64")
        item.set_data_from_numpy(array)
        request.append(item)
    outputs = [grpcclient.InferRequestedOutput("scores")]

    def run() -> Any:
        return client.infer(args.triton_model, request, model_version=args.triton_version, outputs=outputs)

    return run


def export_repository(args: argparse.Namespace, model: Any) -> None:
    """Write the benchmark model as ONNX into a Triton repository (generated config), for the triton row."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs"))
    from scalerec_features.serving import RANKER
    from scalerec_models.repository import write_model_version

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        example = make_inputs(args, 2, "cpu")
        torch.onnx.export(
            model.float().cpu(),
            example,
            str(path),
            input_names=list(RANKER.input_names),
            output_names=list(RANKER.output_names),
            dynamic_axes={
                "history": {0: "B", 1: "L"},
                "context": {0: "B"},
                "candidates": {0: "B", 1: "N"},
                "candidate_features": {0: "B", 1: "N"},
                "scores": {0: "B", 1: "N"},
                "p_click": {0: "B", 1: "N"},
                "p_conversion": {0: "B", 1: "N"},
            },
            opset_version=17,
            dynamo=False,
        )
        card: dict[str, Any] = {
            "description": "benchmarks/gpu_scoring.py model (random weights)",
            "benchmark_args": {k: str(v) for k, v in vars(args).items()},
        }
        version = write_model_version(args.export_repository, args.triton_model, path, card=card, max_batch_size=4096)
    print(f"exported {args.triton_model} version {version} to {args.export_repository}")


def print_table(rows: list[Row], device_name: str, bandwidth: float) -> None:
    print(f"\ndevice: {device_name}   measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    header = (
        f"{'backend':<10} {'batch':>6} {'samples/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'floor ms':>9} {'floor/p50':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.backend:<10} {r.batch:>6} {r.samples_per_s:>12,.0f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} "
            f"{r.floor_ms:>9.4f} {r.floor_fraction:>9.1%}"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available: use --device cpu for a smoke run")
    mode = args.compile or ("cudagraph" if device.type == "cuda" else "none")
    if mode == "cudagraph" and device.type != "cuda":
        raise SystemExit("--compile cudagraph needs a CUDA device")
    dtype = getattr(torch, args.dtype)
    model = build_model(args)
    if args.export_repository:
        export_repository(args, model)
    model = model.to(device=device, dtype=dtype)
    element_size = torch.empty((), dtype=dtype).element_size()
    bandwidth = measure_bandwidth(device, args.bandwidth_mib)
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    compiled = torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False) if mode == "inductor" else None
    if compiled is not None:
        torch._dynamo.config.cache_size_limit = 64  # one graph per batch size

    with contextlib.ExitStack() as stack:
        if args.triton_local:
            if not args.export_repository:
                raise SystemExit("--triton-local serves the exported model: give --export-repository DIR")
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "triton"))
            import local_server

            served = local_server.make_python_backend_repository(
                args.export_repository, Path(stack.enter_context(tempfile.TemporaryDirectory())) / "served"
            )
            server = stack.enter_context(local_server.run_triton_server(served, load_models=[args.triton_model]))
            args.triton_url = server.grpc_url
        rows = run_all(args, model, device, mode, compiled, bandwidth, element_size)
    print_table(rows, device_name, bandwidth)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


def run_all(
    args: argparse.Namespace, model: Any, device: Any, mode: str, compiled: Any, bandwidth: float, element_size: int
) -> list[Row]:
    import torch

    sync = _synchronizer(device)
    rows: list[Row] = []
    for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
        inputs = make_inputs(args, batch, device)
        floor_s = floor_bytes(args, model, batch, element_size) / bandwidth
        try:
            with torch.inference_mode():
                rows.append(
                    summarise("eager", batch, time_calls(functools.partial(model, *inputs), sync, args), floor_s)
                )
                if compiled is not None:
                    times = time_calls(functools.partial(compiled, *inputs), sync, args)
                    rows.append(summarise("inductor", batch, times, floor_s))
            if mode == "cudagraph":
                rows.append(
                    summarise("cudagraph", batch, time_calls(cuda_graph_runner(model, inputs), sync, args), floor_s)
                )
            if args.triton_url:
                rows.append(
                    summarise("triton", batch, time_calls(triton_runner(args, inputs), lambda: None, args), floor_s)
                )
        except torch.OutOfMemoryError:
            print(f"batch {batch}: out of memory, stopping here", file=sys.stderr)
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
