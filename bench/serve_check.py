"""Quick serving figures on the demo model: C=1 latency and idle CPU of the server process tree.

    python -m bench.serve_check [--requests 500]

Starts `modeldock serve` on 127.0.0.1 (building the demo store in a temp folder), measures, stops
it by PID. The full benchmark with baselines is `make bench`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import children, tree_cpu

ROOT = Path(__file__).resolve().parents[1]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, "-m", "server", "demo", "--store", str(store), "--epochs", "3"],
            check=True,
            env=env,
            capture_output=True,
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--store",
                str(store),
                "--port",
                str(args.port),
                "--cache-dir",
                f"{tmp}/cache",
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_ready(args.port, proc)
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 1, 8, 8],
                            "datatype": "FP32",
                            "data": [0.5] * 64,
                        }
                    ]
                }
            )
            conn = http.client.HTTPConnection("127.0.0.1", args.port)
            latencies = []
            deadline = time.monotonic() + 60
            for _ in range(args.requests):
                t = time.perf_counter()
                conn.request("POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
                latencies.append((time.perf_counter() - t) * 1000)
                if time.monotonic() > deadline:
                    break
            latencies.sort()
            p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
            print(f"C=1 digits JSON: {len(latencies)} requests, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            time.sleep(1.0)
            before = tree_cpu(proc.pid)
            time.sleep(args.idle_seconds)
            after = tree_cpu(proc.pid)
            used = sum(after.get(p, 0) - before.get(p, 0) for p in after)
            print(
                f"idle CPU over {args.idle_seconds:g}s: {100 * used / args.idle_seconds:.2f}% of one core across {len(children(proc.pid))} processes"
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
