"""Memory of the demo server per process, as PSS (proportional set size), not RSS.

The HTTP servers and LitServe's queue manager are forked from the supervisor, so RSS counts the
pages they share with it (torch, onnxruntime, Python) once per process; PSS splits each shared
page among the processes that map it, so the PSS of all processes adds up to what the server
really costs. Also said per process: whether it maps torch's and onnxruntime's libraries (a
forked child maps its parent's even if it never calls them).

    python -m bench.footprint [--settle 3] [--json docs/footprint.jsonl]

Starts the demo exactly as `make serve` does (the digits model from `modeldock demo`, `serve.yaml`,
its defaults: one HTTP server, one worker, the pool worker, gRPC), on 127.0.0.1, and stops it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT, ServerProcess, free_port
from bench.procs import children, command_line, holders, serves_unix_socket

LIBRARIES = {"torch": "libtorch_cpu", "onnxruntime": "onnxruntime_pybind11_state"}


def smaps_kib(pid: int) -> dict[str, int]:
    """Rss, Pss, Shared and Private totals of one process (kB), from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0])
    return out


def mapped_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, marker in LIBRARIES.items() if marker in maps]


def role(pid: int, root: int, serving: set[int], grpc: set[int]) -> str:
    cmd = command_line(pid)
    if pid == root:
        return "main (supervisor)"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "spawn_main" in cmd:
        return "spawned (worker / pool worker / gRPC)"
    if pid in grpc:
        return "gRPC server"
    if serves_unix_socket(pid):
        return "queue manager"
    return "HTTP server" if pid in serving else "other"


def measure(settle_s: float) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="modeldock-footprint-"))
    try:
        store = work / "models"
        subprocess.run([PY, "-m", "server", "demo", "--store", str(store)], cwd=ROOT, check=True, timeout=600)
        port, grpc_port = free_port(), free_port()
        config = work / "serve.yaml"
        config.write_text((ROOT / "serve.yaml").read_text() + f"grpc_port: {grpc_port}\n")
        cmd = [PY, "-m", "server", "serve", "--store", str(store), "--config", str(config), "--port", str(port)]
        server = ServerProcess("modeldock", [*cmd, "--cache-dir", str(work / "cache")], port, work)
        try:
            time.sleep(settle_s)  # past the first poll and the workers' warm-up
            root = server.proc.pid
            serving, grpc = set(holders(root, port)), set(holders(root, grpc_port))
            rows = []
            for pid in sorted(children(root)):
                kib = smaps_kib(pid)
                rows.append(
                    {
                        "pid": pid,
                        "role": role(pid, root, serving, grpc),
                        "pss_kib": kib.get("Pss", 0),
                        "rss_kib": kib.get("Rss", 0),
                        "private_kib": kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0),
                        "maps": mapped_libraries(pid),
                    }
                )
            return rows
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| process | PSS | RSS | private | maps |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        maps = ", ".join(r["maps"]) or "-"
        lines.append(f"| {r['role']} | {r['pss_kib'] / 1024:.0f} MiB | {r['rss_kib'] / 1024:.0f} MiB | "
                     f"{r['private_kib'] / 1024:.0f} MiB | {maps} |")  # fmt: skip
    pss, rss = sum(r["pss_kib"] for r in rows), sum(r["rss_kib"] for r in rows)
    lines.append(f"| **all {len(rows)} processes** | **{pss / 1024:.0f} MiB** | {rss / 1024:.0f} MiB (summed) | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between ready and the reading")
    ap.add_argument("--json", type=Path, help="append the reading as one JSON line")
    args = ap.parse_args()
    rows = measure(args.settle)
    print(table(rows))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"t": time.strftime("%Y-%m-%dT%H:%M:%S"), "processes": rows}) + "\n")


if __name__ == "__main__":
    main()
