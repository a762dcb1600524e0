"""`make soak`: a bounded soak at 32 concurrent requests with hot swaps.

    python -m bench.soak [--minutes 10] [--swap-every 30] [--out docs]

Runs the MLP on `modeldock serve` (127.0.0.1, a free port), in windows of 10 s: per window it
records throughput, p99, errors, which model versions answered (from the responses) and the RSS
of every server process; a new version lands every `--swap-every` seconds. Writes
<out>/soak.jsonl and <out>/soak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import servers
from bench.common import json_body, run_client
from bench.models import build_store
from bench.procs import children, rss_mib
from bench.swap import land_copy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--swap-every", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_store(work / "models", ("mlp",))
        setup = servers.Setup()
        server = servers.start("modeldock", setup, work / "models", "mlp", work)
        stop, swaps = threading.Event(), []

        def swapper() -> None:
            while not stop.wait(args.swap_every):
                swaps.append(land_copy(work / "models", "mlp"))

        t = threading.Thread(target=swapper, daemon=True)
        t.start()
        deadline = time.monotonic() + 60 * args.minutes
        try:
            window = 0
            while time.monotonic() < deadline:
                r = run_client(server.port, "mlp", json_body((64,)), [], 32, 10**9, args.window, work, versions=True)
                server.check_alive()
                rss = {str(p): round(rss_mib(p), 1) for p in children(server.pid)}
                row = {"window": window, "landed_so_far": len(swaps), "rss_mib": rss, **r}
                rows.append(row)
                print(json.dumps(row), flush=True)
                window += 1
        finally:
            stop.set()
            server.stop()
    (out / "soak.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "soak.md").write_text(report(rows, args))
    print(report(rows, args))


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    total = lambda r: sum(r["rss_mib"].values())  # noqa: E731
    warm = rows[min(2, len(rows) - 1)]
    last = rows[-1]
    first_seen: dict[str, float] = {}  # version -> first window that it answered in
    for r in rows:
        for v in r["versions"]:
            first_seen.setdefault(v, r["window"])
    answered = sorted(first_seen, key=lambda v: first_seen[v])
    lines = [
        "# Soak",
        "",
        f"`python -m bench.soak --minutes {args.minutes:g} --swap-every {args.swap_every:g}` on {os.cpu_count()} cores: "
        f"MLP, JSON, 32 concurrent requests, a new version every {args.swap_every:g} s.",
        "",
        f"- requests: {sum(r['requests'] for r in rows):,}, errors: {sum(r['errors'] for r in rows)}, "
        f"versions landed: {last['landed_so_far']}, versions that answered (from the responses' model_version): "
        f"{len(answered)} ({', '.join('v' + v for v in answered)}): {max(0, len(answered) - 1)} swaps seen",
        f"- server RSS (all processes): {total(warm):.0f} MiB after warm-up (window {warm['window']}), "
        f"{total(last):.0f} MiB at the end: {100 * (total(last) / total(warm) - 1):+.1f}%",
        f"- max RSS of any window: {max(total(r) for r in rows):.0f} MiB",
        "",
        "| window | landed so far | versions answering | req/s | p50 ms | p99 ms | errors | RSS MiB (all processes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['window']} | {r['landed_so_far']} | {', '.join(sorted(r['versions'], key=lambda v: int(v) if v.isdigit() else -1))} | {r['throughput']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
        f"{r['errors']} | {total(r):.0f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
