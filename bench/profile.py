"""Where a request's CPU goes: modeldock on the MLP under the bench client, per process.

    python -m bench.profile [--concurrency 32] [--seconds 4] [--rounds 5] [--config-extra YAML]
                            [--py-spy PATH] [--strace]

Prints, per round and as medians: throughput, p50/p99, and CPU microseconds per request of the
client, the HTTP process and the inference worker, with the kernel's part of each (from /proc,
every thread counted). With
`--py-spy`, also records each serving process with py-spy (raw folded stacks next to the
summary); with `--strace`, counts each serving process's system calls (both slow the server:
read their shares, not their totals). Linux only; loopback only; every load is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench import servers
from bench.common import PY, ROOT, json_body
from bench.models import build_store

_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _cpu_us(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU of every thread of `pid`, in microseconds."""
    user = system = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        user, system = user + int(fields[11]) * _TICK_US, system + int(fields[12]) * _TICK_US
    return user, system


def _tracers(roles: dict[int, str], out: Path, spy: str | None, strace: bool, seconds: float) -> list[Any]:
    procs = []
    for pid, role in roles.items():
        if role not in ("HTTP server", "inference worker"):
            continue
        name = out / role.replace(" ", "_")
        if spy:
            cmd = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw"]
            procs.append(subprocess.Popen([*cmd, "-o", f"{name}.folded", "--nonblocking"], stderr=subprocess.DEVNULL))
        if strace:
            procs.append(subprocess.Popen(["strace", "-c", "-f", "-o", f"{name}.strace", "-p", str(pid)]))
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config-extra", default="", help="YAML appended to the bench's modeldock config")
    ap.add_argument("--py-spy", help="py-spy executable: record each serving process in the first round")
    ap.add_argument("--strace", action="store_true", help="count system calls in the first round")
    ap.add_argument("--out", type=Path, help="where traces go (default: a new temporary folder)")
    args = ap.parse_args()
    if args.strace and not shutil.which("strace"):
        raise SystemExit("bench.profile: --strace needs strace on PATH")
    work = args.out or Path(tempfile.mkdtemp(prefix="profile-"))
    work.mkdir(parents=True, exist_ok=True)
    build_store(work / "store", ("mlp",))
    setup = servers.Setup(rollout='{mode: "off"}', extra=args.config_extra)
    server = servers.start("modeldock", setup, work / "store", "mlp", work)
    try:
        roles = servers.roles("modeldock", server.pid, server.port)
        meta = json.load(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v2/models/mlp", timeout=10))
        (work / "body.json").write_bytes(json_body(tuple(meta["inputs"][0]["shape"][1:])))
        url = f"http://127.0.0.1:{server.port}/v2/models/mlp/infer"
        rows = []
        for round_ in range(args.rounds):
            traced = round_ == 0 and (args.py_spy or args.strace)
            tracers = _tracers(roles, work, args.py_spy, args.strace, args.seconds) if traced else []
            before = {pid: _cpu_us(pid) for pid in roles}
            client = [PY, "-m", "bench.client", url, str(work / "body.json"), "--concurrency", str(args.concurrency)]
            done = subprocess.run(
                [*client, "--requests", "1000000", "--max-seconds", str(args.seconds)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            result = json.loads(done.stdout)
            per: dict[str, float] = {}
            for pid, role in roles.items():
                (user, system), (user0, system0) = _cpu_us(pid), before[pid]
                per[role] = per.get(role, 0.0) + (user + system - user0 - system0) / result["requests"]
                per[role + " kernel"] = per.get(role + " kernel", 0.0) + (system - system0) / result["requests"]
            for tracer in tracers:
                if tracer.args[0] == "strace":
                    tracer.send_signal(signal.SIGINT)
                tracer.wait(60)
            row = {
                "req/s": result["throughput"],
                "p50 ms": result["p50_ms"],
                "p99 ms": result["p99_ms"],
                "client us": result["client_cpu_s"] * 1e6 / result["requests"],
                "HTTP us": per.get("HTTP server", 0.0),
                "(kernel)": per.get("HTTP server kernel", 0.0),
                "worker us": per.get("inference worker", 0.0),
                "(kernel) ": per.get("inference worker kernel", 0.0),
            }
            rows.append(row)
            print(("traced " if traced else "") + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
        # The traced round is slower: medians over the others when there are any.
        plain = rows[1:] if (args.py_spy or args.strace) and len(rows) > 1 else rows
        print("median " + "  ".join(f"{k} {statistics.median(r[k] for r in plain):,.2f}" for k in rows[0]))
        if args.py_spy or args.strace:
            print(f"traces in {work}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
