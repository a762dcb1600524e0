"""p99 while versions swap under load, against steady state on the same server; swaps are counted
from the `model_version` each response carries, not from the versions written."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import json_body, run_client


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


def swap_under_load(
    port: int,
    store: Path,
    model: str,
    shape: tuple[int, ...],
    work: Path,
    poll_interval: float,
    steady_s: float = 6.0,
    swap_s: float = 14.0,
) -> dict[str, Any]:
    """A steady run at C=32, then one during which a new version lands every poll interval + 1 s
    (so that the server can pick up each), the last one early enough to be seen."""
    body = json_body(shape)
    steady = run_client(port, model, body, [], 32, 10**9, steady_s, work, versions=True)
    every = poll_interval + 1.0
    stop, landed = threading.Event(), []

    def publisher() -> None:
        started = time.monotonic()
        while not stop.wait(every) and time.monotonic() - started + every < swap_s:
            landed.append(land_copy(store, model))

    t = threading.Thread(target=publisher)
    t.start()
    try:
        during = run_client(port, model, body, [], 32, 10**9, swap_s, work, versions=True)
    finally:
        stop.set()
        t.join()
    answered = sorted(during["versions"].items(), key=lambda kv: kv[1]["first_s"])
    first = answered[0][0] if answered else "?"
    return {
        "landed": landed,
        "answered": {v: s["count"] for v, s in answered},
        "swaps_seen": sum(1 for v, _ in answered if v != first),
        "landed_not_seen": [n for n in landed if str(n) not in during["versions"]],
        "landing_every_s": every,
        "errors": during["errors"] + steady["errors"],
        "p99_steady_ms": steady["p99_ms"],
        "p99_swap_ms": during["p99_ms"],
        "throughput_steady": steady["throughput"],
        "throughput_swap": during["throughput"],
    }
