"""p99 while versions swap under load, against steady state on the same server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.run import json_body

ROOT = Path(__file__).resolve().parents[1]


def _client(port: int, model: str, body_file: Path, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.client",
            f"http://127.0.0.1:{port}/v2/models/{model}/infer",
            str(body_file),
            "--concurrency",
            "32",
            "--requests",
            "1000000",
            "--max-seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def land_copy(store: Path, model: str) -> int:
    """A new version of `model`: a copy of its first version, landed atomically (stage, rename)."""
    src = next(p for p in sorted((store / model).iterdir()) if p.name.isdigit())
    n = max(int(p.name) for p in (store / model).iterdir() if p.name.isdigit()) + 1
    staging = store / model / f".staging-{n}"
    shutil.copytree(src, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = n
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(store / model / str(n))
    return n


def swap_under_load(port: int, store: Path, model: str, shape: tuple[int, ...], seconds: float = 6.0) -> dict[str, Any]:
    """Steady run, then a run during which a new version lands every second (copies of v1)."""
    body_file = store.parent / "swap-body.json"
    body_file.write_bytes(json_body(shape))
    steady = _client(port, model, body_file, seconds)
    stop, landed = threading.Event(), []

    def publisher() -> None:
        while not stop.wait(1.0):
            landed.append(land_copy(store, model))

    t = threading.Thread(target=publisher)
    t.start()
    time.sleep(0.2)
    during = _client(port, model, body_file, seconds)
    stop.set()
    t.join()
    return {
        "swaps": len(landed),
        "errors": during["errors"] + steady["errors"],
        "p99_steady_ms": steady["p99_ms"],
        "p99_swap_ms": during["p99_ms"],
        "throughput_steady": steady["throughput"],
        "throughput_swap": during["throughput"],
    }
