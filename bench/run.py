"""`make bench`: modeldock against a hand-written FastAPI + onnxruntime baseline and, with
`--peers triton`, Triton Inference Server, in one run.

    python -m bench.run [--out docs] [--tiny] [--peers triton] [--requests N] [--threads T]

Every server runs alone while measured, in rounds (A/B/C, the order rotating per round), on
127.0.0.1 free ports, with the client in its own process; each server's answers are checked
before it is measured. Writes <out>/benchmarks.jsonl (every run), <out>/benchmarks.md (tables,
ratios) and <out>/benchmarks.png (throughput and p99 against concurrency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import report, sections, servers
from bench import triton as tr
from bench.common import BenchError, ServerProcess, binary_body, check_answers, json_body, load, sample
from bench.procs import rss_mib, tree_cpu
from bench.swap import swap_under_load


@dataclass(frozen=True)
class Plan:
    reps: int = 2
    requests: int = 15000
    max_s: float = 4.0
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    models: tuple[str, ...] = ("mlp", "cnn", "digits")
    swap: bool = True
    plot: bool = True


TINY = Plan(reps=1, requests=100, max_s=2.0, concurrency=(1, 8), models=("mlp",), swap=False, plot=False)


def _session(onnx: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])


def ceiling(
    onnx: Path, row_shape: tuple[int, ...], max_batch: int, threads: int, seconds: float = 1.5
) -> dict[str, Any]:
    """In-process onnxruntime at the servers' thread count: samples/s at the best batch <= max_batch."""
    sess = _session(onnx, threads)
    best: dict[str, Any] = {}
    batch = 1
    while batch <= max_batch:
        x = np.random.default_rng(0).random((batch, *row_shape), dtype=np.float32)
        sess.run(None, {"input": x})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sess.run(None, {"input": x})
            n += 1
        rate = n * batch / (time.perf_counter() - t0)
        if rate > best.get("samples_per_s", 0):
            best = {"batch": batch, "samples_per_s": rate, "ms_per_batch": 1000 * (time.perf_counter() - t0) / n}
        batch *= 2
    return best


def idle_cpu(server: ServerProcess, seconds: float = 5.0) -> float:
    time.sleep(1.0)
    before = tree_cpu(server.pid)
    time.sleep(seconds)
    after = tree_cpu(server.pid)
    return 100 * sum(after.get(p, 0) - before.get(p, 0) for p in after) / seconds


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--peers", default="", help="extra servers to measure, comma-separated: triton")
    ap.add_argument("--triton-home", type=Path, default=tr.default_home(), help="where nvidia-pytriton is installed")
    ap.add_argument("--requests", type=int, help="requests per point (default: the plan's)")
    ap.add_argument("--reps", type=int, help="rounds per server (default: the plan's)")
    ap.add_argument("--models", help="comma-separated subset of mlp,cnn,digits")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every inference session, every side")
    return ap.parse_args()


def main() -> None:
    args = _parse()
    plan = TINY if args.tiny else Plan()
    changes: dict[str, Any] = {"requests": args.requests, "reps": args.reps}
    if args.models:
        changes["models"] = tuple(m.strip() for m in args.models.split(","))
    plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
    peers = list(dict.fromkeys(p.strip() for p in args.peers.split(",") if p.strip()))
    unknown = [p for p in peers if p != "triton"] + [m for m in plan.models if m not in ("mlp", "cnn", "digits")]
    if unknown or args.threads < 1 or plan.requests < 1 or plan.reps < 1:
        sys.exit(f"bench: bad arguments {unknown or ''} (peers: triton; models: mlp, cnn, digits; counts >= 1)")
    triton = None
    if "triton" in peers:
        try:
            triton = tr.locate(args.triton_home)
        except (tr.TritonUnavailable, OSError, subprocess.SubprocessError) as e:
            sys.exit(f"bench: --peers triton: {e}")
    # The swap phase lands unrelated copies and measures the hot swap itself: no rollout trial.
    setup = servers.Setup(
        threads=args.threads, triton=triton, rollout='{mode: "off"}'
    )  # quoted: YAML 1.1 reads a bare off as false
    kinds = ["baseline", "modeldock", *peers]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows, checks, seconds = measure(plan, setup, kinds)
    except BenchError as e:
        sys.exit(f"bench: {e}")
    meta = {
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "seconds": seconds,
        "reps": plan.reps,
        "requests": plan.requests,
        "max_s": plan.max_s,
        "threads": setup.threads,
        "checks": checks,
        "plot": plan.plot,
        "describe": {k: setup.describe(k) for k in kinds},
    }
    text = report.summarize(rows, meta)
    (out / "benchmarks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sections.write_keeping(out / "benchmarks.md", text)  # e.g. the Rollout section of bench.rollout
    if plan.plot:
        report.plot(rows, out / "benchmarks.png")
    print(text)


def measure(plan: Plan, setup: servers.Setup, kinds: list[str]) -> tuple[list[dict[str, Any]], int, float]:
    rows: list[dict[str, Any]] = []
    checks, started = 0, time.monotonic()

    def record(**kw: Any) -> None:
        rows.append(kw)
        print(json.dumps(kw), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from bench.models import build_store

        shapes = build_store(work / "models", plan.models)
        for model in plan.models:
            shape = shapes[model]
            onnx = next((work / "models" / model).glob("*/model.onnx"))
            record(kind="ceiling", model=model, **ceiling(onnx, shape, 32 if model != "mlp" else 256, setup.threads))
            sess = _session(onnx, setup.threads)
            expected = dict(
                zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": sample(shape)}), strict=True)
            )
            solo = work / f"store-{model}"  # each server serves only the model under test
            shutil.copytree(work / "models" / model, solo / model)
            concurrency = plan.concurrency if model == "mlp" else tuple(c for c in plan.concurrency if c in (1, 32))
            bodies = {}
            if model != "cnn":  # 12k floats as JSON would measure the JSON parser, not serving
                bodies["json"] = (json_body(shape), [])
            if model != "digits":
                bodies["binary"] = binary_body(shape)
            for rep in range(plan.reps):
                order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
                for kind in order:
                    server = servers.start(kind, setup, solo, model, work)
                    try:
                        check_answers(server, model, bodies, expected)
                        checks += len(bodies)
                        for fmt, (body, headers) in bodies.items():
                            for c in concurrency if fmt == "json" or model == "cnn" else (32,):
                                roles = lambda pid, k=kind, p=server.port: servers.roles(k, pid, p)  # noqa: E731
                                r = load(server, model, body, headers, c, plan.requests, plan.max_s, work, roles)
                                record(kind=kind, model=model, body=fmt, concurrency=c, rep=rep, **r)
                        if rep == 0:
                            found = servers.roles(kind, server.pid, server.port)
                            memory = {f"{pid} {role}": round(rss_mib(pid), 1) for pid, role in found.items()}
                            record(kind=kind, model=model, processes=dict(Counter(found.values())), memory_mib=memory)
                        if kind == "modeldock" and model == "mlp" and rep == 0:
                            record(kind="modeldock", model=model, idle_cpu_pct=idle_cpu(server))
                            if plan.swap:
                                swap = swap_under_load(server.port, solo, model, shape, work, setup.poll_interval)
                                server.check_alive()
                                record(kind="swap", model=model, **swap)
                    finally:
                        server.stop()
    return rows, checks, time.monotonic() - started


if __name__ == "__main__":
    main()
