"""Two checkouts of modeldock, same run, alternating rounds: MLP, JSON, C=1 and C=32.

    python -m bench.ab_versions --old DIR [--new DIR] [--rounds 3]

DIR is a checkout (e.g. `git worktree add /somewhere <commit>`); both run on this venv's Python.
The newer server gets the settings that make it comparable (no rollout, no pool, no gRPC).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from bench.common import free_port
from bench.models import build_store

ROOT = Path(__file__).resolve().parents[1]
NEW_KEYS = "grpc_port: 0\npool_workers: 0\ndefaults:\n  threads: 1\n  rollout: {mode: 'off'}\n"


def start(checkout: Path, newer: bool, store: Path, work: Path, port: int) -> subprocess.Popen[bytes]:
    cfg = work / f"{port}.yaml"
    cfg.write_text("api_servers: 1\n" + (NEW_KEYS if newer else "defaults:\n  threads: 1\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDOCK_")} | {"PYTHONPATH": str(checkout)}
    args = [sys.executable, "-m", "server", "serve", "--store", str(store), "--port", str(port), "--config", str(cfg)]
    proc = subprocess.Popen(
        [*args, "--cache-dir", str(work / f"cache-{port}")],
        cwd=checkout,
        env=env,
        stdout=(work / f"{port}.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit((work / f"{port}.log").read_text()[-2000:])


def client(port: int, body: Path, concurrency: int, total: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.client",
            f"http://127.0.0.1:{port}/v2/models/mlp/infer",
            str(body),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(total),
            "--max-seconds",
            "6",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, default=ROOT)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    build_store(work / "models", ("mlp",))
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    body = work / "body.json"
    body.write_text(
        json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]})
    )
    results: dict[str, dict[int, list[dict[str, float]]]] = {"old": {1: [], 32: []}, "new": {1: [], 32: []}}
    for round_ in range(args.rounds):
        for kind in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
            port = free_port()
            proc = start(args.old if kind == "old" else args.new, kind == "new", work / "models", work, port)
            try:
                client(port, body, 32, 500)  # warm-up
                for concurrency, total in ((1, 3000), (32, 15000)):
                    results[kind][concurrency].append(client(port, body, concurrency, total))
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    for c in (1, 32):
        med = {
            k: {m: statistics.median(r[m] for r in results[k][c]) for m in ("throughput", "p50_ms")} for k in results
        }
        old, new = med["old"], med["new"]
        print(
            f"C={c}: req/s old {old['throughput']:.0f} new {new['throughput']:.0f} "
            f"({new['throughput'] / old['throughput']:.2f}x); p50 ms old {old['p50_ms']:.2f} new {new['p50_ms']:.2f} "
            f"({new['p50_ms'] / old['p50_ms']:.2f}x)"
        )


if __name__ == "__main__":
    main()
