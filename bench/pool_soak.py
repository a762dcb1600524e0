"""`make soak`, fourth part: many models in one server within a memory budget (issue: memory budget).

    python -m bench.pool_soak [--models 1000] [--fit 50] [--seconds 180] [--concurrency 8] [--out docs]

A store of `--models` small MLPs (ONNX, 10 distinct weight sets, published with `publish_artifact`).
First a calibration server (budget 1 GiB) loads 20 of them one by one and reads what a model
costs in the pool (`modeldock_pool_memory_used_bytes` over the loads); the soak server then gets
`memory_budget` = `--fit` x that cost. `--concurrency` client threads (keep-alive HTTP/1.1, one
connection each) pick a model by Zipf(1.1) over the store and send one-row JSON requests, for
`--seconds` (bounded in count too). A request answered with `x-model-cold-start-ms` waited for a
load: a cold start; the others are hits. The PSS of every server process (/proc/PID/smaps_rollup)
is summed every 5 s. Then a warm single-model server (the same MLP, same client, same concurrency)
gives the p99 that hits are held to (issue: within 1.5x). Prints and writes the "Many models"
section of <out>/reliability.md and the run to <out>/pool-soak.jsonl; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import sections
from bench.common import PY, ServerProcess, free_port
from bench.footprint import smaps_kib
from bench.procs import children
from model_store import ModelStore

BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]})
ZIPF_S = 1.1
CALIBRATE = 20


class TinyMLP(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.l2 = torch.nn.Linear(4, 64), torch.nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


def make_store(root: Path, count: int) -> list[str]:
    store, x = ModelStore(root / "models"), torch.rand(3, 4)
    files = []
    for seed in range(10):
        path = root / f"mlp{seed}.onnx"
        torch.onnx.export(TinyMLP(seed), (x,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, dynamo=False)  # fmt: skip
        files.append(path)
    names = [f"m{i:04d}" for i in range(count)]
    for i, name in enumerate(names):
        store.publish_artifact(name, "onnx", files[i % len(files)], example_inputs=x)
    return names


def start(work: Path, store: Path, config: dict[str, Any], tag: str) -> ServerProcess:
    port = free_port()
    path = work / f"{tag}.yaml"
    path.write_text(json.dumps({"grpc_port": 0, "poll_interval": 2.0, **config}))
    cmd = [PY, "-m", "server", "serve", "--store", str(store), "--config", str(path), "--port", str(port)]
    return ServerProcess(tag, [*cmd, "--cache-dir", str(work / f"cache-{tag}")], port, work, ready_s=600)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


ERRORS: dict[int, str] = {}  # one response body per failing status, for the report


def post(conn: http.client.HTTPConnection, model: str) -> tuple[int, float, float | None]:
    started = time.perf_counter()
    conn.request("POST", f"/v2/models/{model}/infer", BODY, {"content-type": "application/json"})
    reply = conn.getresponse()
    body = reply.read()
    if reply.status != 200:
        ERRORS.setdefault(reply.status, body.decode(errors="replace")[:300])
    cold = reply.getheader("x-model-cold-start-ms")
    return reply.status, time.perf_counter() - started, float(cold) if cold else None


def load(port: int, names: list[str], weights: np.ndarray[Any, Any], threads: int, seconds: float, cap: int) -> list[tuple[int, float, float | None]]:  # fmt: skip
    """`threads` clients for `seconds` (at most `cap` requests each); (status, latency, cold ms)."""
    results: list[tuple[int, float, float | None]] = []
    lock, stop_at = threading.Lock(), time.monotonic() + seconds

    def client(seed: int) -> None:
        rng, conn, mine = random.Random(seed), http.client.HTTPConnection("127.0.0.1", port, timeout=60), []
        cumulative = np.cumsum(weights)
        try:
            while time.monotonic() < stop_at and len(mine) < cap:
                model = names[int(np.searchsorted(cumulative, rng.random() * cumulative[-1]))]
                try:
                    mine.append(post(conn, model))
                except (OSError, http.client.HTTPException):
                    mine.append((0, 0.0, None))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        finally:
            conn.close()
            with lock:
                results.extend(mine)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def pss_mib(root: int) -> float:
    total = 0
    for pid in children(root):
        with contextlib.suppress(OSError):  # a process that just exited
            total += smaps_kib(pid).get("Pss", 0)
    return total / 1024


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000 if values else float("nan")


def calibrate(work: Path, store: Path, names: list[str]) -> float:
    """Bytes a model costs in the pool, measured by the server over CALIBRATE loads."""
    server = start(work, store, {"memory_budget": "1GiB"}, "calibrate")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for name in names[:CALIBRATE]:
            assert post(conn, name)[0] == 200
        conn.close()
        used = metric(server.port, "modeldock_pool_memory_used_bytes")
    finally:
        server.stop()
    return used / (CALIBRATE - 1)  # the first model's load sets onnxruntime up: fixed overhead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--fit", type=int, default=50, help="models the budget holds")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--warm-seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=200_000, help="per client thread")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modeldock-pool-soak-"))
    try:
        t0 = time.monotonic()
        names = make_store(work, args.models)
        store = work / "models"
        print(f"store: {args.models} models in {time.monotonic() - t0:.0f} s", flush=True)
        per_model = calibrate(work, store, names)
        budget = int(args.fit * per_model)
        print(
            f"a model costs {per_model / 1024:.0f} KiB in the pool: budget {budget >> 10} KiB for {args.fit}",
            flush=True,
        )
        t0 = time.monotonic()
        server = start(work, store, {"memory_budget": str(budget)}, "soak")
        ready_s = time.monotonic() - t0
        weights = np.array([1 / (k**ZIPF_S) for k in range(1, len(names) + 1)])
        rng = random.Random(7)
        order = names[:]
        rng.shuffle(order)  # which model is popular is not its name's order
        pss: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(5.0):
                pss.append(pss_mib(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            idle_pss = pss_mib(server.pid)
            sampler.start()
            started = time.monotonic()
            results = load(server.port, order, weights, args.concurrency, args.seconds, args.max_requests)
            took = time.monotonic() - started
            evictions = metric(server.port, "modeldock_pool_evictions_total")
            used = metric(server.port, "modeldock_pool_memory_used_bytes")
        finally:
            sampling.set()
            server.stop()
        warm = start(work, store, {"models": {names[0]: {}}}, "warm")
        try:
            warm_results = load(
                warm.port, [names[0]], np.array([1.0]), args.concurrency, args.warm_seconds, args.max_requests
            )
        finally:
            warm.stop()
        hits = [lat for status, lat, cold in results if status == 200 and cold is None]
        colds = [lat for status, lat, cold in results if status == 200 and cold is not None]
        failed = [r for r in results if r[0] != 200]
        warm_lat = [lat for status, lat, _ in warm_results if status == 200]
        quarter = max(1, len(pss) // 4)
        row = {
            "t": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "models": args.models,
            "fit": args.fit,
            "concurrency": args.concurrency,
            "seconds": round(took, 1),
            "ready_s": round(ready_s, 1),
            "model_kib": round(per_model / 1024, 1),
            "budget_kib": budget >> 10,
            "used_kib_at_end": round(used / 1024),
            "requests": len(results),
            "failed": len(failed),
            "failed_statuses": sorted({r[0] for r in failed}),
            "errors": dict(ERRORS),
            "hit_rate": round(len(hits) / max(1, len(hits) + len(colds)), 3),
            "req_per_s": round(len(results) / took, 1),
            "hit_p50_ms": round(pct(hits, 50), 2),
            "hit_p99_ms": round(pct(hits, 99), 2),
            "cold_p50_ms": round(pct(colds, 50), 2),
            "cold_p99_ms": round(pct(colds, 99), 2),
            "warm_p50_ms": round(pct(warm_lat, 50), 2),
            "warm_p99_ms": round(pct(warm_lat, 99), 2),
            "evictions_per_s": round(evictions / took, 1),
            "idle_pss_mib": round(idle_pss),
            "peak_pss_mib": round(max(pss, default=idle_pss)),
            "pss_first_quarter_mib": round(statistics.mean(pss[:quarter]), 1) if pss else None,
            "pss_last_quarter_mib": round(statistics.mean(pss[-quarter:]), 1) if pss else None,
        }
        row["hit_p99_vs_warm"] = round(row["hit_p99_ms"] / row["warm_p99_ms"], 2) if row["warm_p99_ms"] else None
        print(json.dumps(row, indent=1))
        if args.out:
            with (args.out / "pool-soak.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            sections.splice(args.out / "reliability.md", "bench.pool_soak", section(row))
        if failed:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def section(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"`python -m bench.pool_soak --models {r['models']} --fit {r['fit']} --out docs` on 2 cores: "
            f"{r['models']} MLPs (ONNX) in one store, `memory_budget` for {r['fit']} of them "
            f"({r['budget_kib']} KiB: {r['model_kib']} KiB a model, measured by the server), "
            f"{r['concurrency']} clients picking a model by Zipf({ZIPF_S}) for {r['seconds']} s.",
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| requests (failed) | {r['requests']} ({r['failed']}) |",
            f"| throughput | {r['req_per_s']} req/s |",
            f"| hit rate (no load waited for) | {r['hit_rate']:.1%} |",
            f"| hits p50 / p99 | {r['hit_p50_ms']} / {r['hit_p99_ms']} ms |",
            f"| cold starts p50 / p99 | {r['cold_p50_ms']} / {r['cold_p99_ms']} ms |",
            f"| warm single-model server p50 / p99 (same client) | {r['warm_p50_ms']} / {r['warm_p99_ms']} ms |",
            f"| hits p99 / warm p99 | {r['hit_p99_vs_warm']}x |",
            f"| evictions | {r['evictions_per_s']} /s |",
            f"| PSS of all processes: idle, peak | {r['idle_pss_mib']}, {r['peak_pss_mib']} MiB |",
            f"| PSS first vs last quarter of the run | {r['pss_first_quarter_mib']} vs {r['pss_last_quarter_mib']} MiB |",
            f"| pool memory in use at the end | {r['used_kib_at_end']} KiB of {r['budget_kib']} |",
            f"| server start with {r['models']} models (all verified) | {r['ready_s']} s |",
        ]
    )


if __name__ == "__main__":
    main()
