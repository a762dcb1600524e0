"""In-process ceiling of each artifact format on the same model: the store's runtimes, timed.

    python -m bench.formats [--model cnn|mlp] [--threads 1] [--seconds 3]

Publishes the model once with onnx, torchscript and exported, loads each artifact the way the
server does (`model_store.runtimes.load_runtime`, the given intra-op threads) and times
`predict` on batches of 32 and of 1, taking turns, for samples/s and the median latency. This
is each format's ceiling, with no HTTP, no queue and no batching wait: what the server can reach
at best serving that format. AOTInductor packages are not measured yet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.models import PeersMLP, SmallResNet
from model_store import ModelStore
from model_store.manifest import Manifest
from model_store.runtimes import load_runtime

FORMATS = ("onnx", "torchscript", "exported")
SHAPES = {"cnn": (3, 64, 64), "mlp": (64,)}


def time_predict(runtime: Any, x: np.ndarray[Any, Any], seconds: float) -> list[float]:
    runtime.predict({"input": x})  # warm
    took: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(took) < 100_000:
        t = time.perf_counter()
        runtime.predict({"input": x})
        took.append(time.perf_counter() - t)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(SHAPES), default="cnn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = (SmallResNet() if args.model == "cnn" else PeersMLP()).eval()
    shape = SHAPES[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "models")
        v = store.publish(args.model, model, example_inputs=torch.rand(2, *shape), formats=FORMATS)
        folder = store.path(args.model, v)
        manifest = Manifest.load(folder)
        runtimes = {a.format: load_runtime(a.format, folder / a.path, manifest.signature, threads=args.threads)
                    for a in manifest.artifacts}  # fmt: skip
        results: dict[tuple[str, int], list[float]] = {}
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):
            for rows in (32, 1):
                x = rng.random((rows, *shape), dtype=np.float32)
                for fmt, runtime in runtimes.items():
                    results.setdefault((fmt, rows), []).extend(time_predict(runtime, x, args.seconds))
    print(f"{args.model}, {args.threads} intra-op thread(s), torch {torch.__version__}")
    print("| format | samples/s at batch 32 | p50 ms at batch 1 | vs onnx (batch 32) |")
    print("| --- | --- | --- | --- |")
    base = 32 / statistics.median(results[("onnx", 32)])
    for fmt in FORMATS:
        rate = 32 / statistics.median(results[(fmt, 32)])
        p50 = 1000 * statistics.median(results[(fmt, 1)])
        print(f"| {fmt} | {rate:,.0f} | {p50:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
