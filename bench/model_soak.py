"""`make soak`, third part: a model added to and removed from the store many times while another
serves under load, and the memory of every server process.

    python -m bench.model_soak [--cycles 100] [--max-minutes 15] [--rate 100] [--every 10] [--out docs]

`modeldock serve` (127.0.0.1, a free port, `grpc_port: 0`, `poll_interval` `--poll-interval`,
default `pool_workers: 1`) starts with one model, `tiny` (the MLP, ONNX), under an open-loop
client at `--rate` req/s (bench/paced.py) that records every response. Each cycle a second MLP,
`extra`, lands as a whole model folder (a copy prepared once, put in a hidden staging folder and
renamed into place, as `publish` lands a version); the cycle waits until
`POST /v2/models/extra/infer` answers 200, then renames the folder away (and deletes it) and waits
until the same request answers 404. Per cycle it measures landing -> first 200 and removal -> 404.
The RSS of every server process (main, HTTP server, `tiny`'s worker, the pool worker, queue
manager, ...) is read after the first cycle and every `--every` cycles. Writes the generated
"Model soak" section of <out>/reliability.md and every sample to <out>/model-soak.jsonl; exits 1
(after writing them) if any request to `tiny` failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

from bench import sections
from bench.common import PY, ROOT, BenchError, ServerProcess, free_port
from bench.models import PeersMLP
from bench.procs import open_files, rss_mib
from bench.retrain import Paced, bodies, p99, write_bodies
from bench.servers import roles
from model_store import ModelStore

SERVED, ADDED = "tiny", "extra"
WITHIN = 10.0  # % of RSS change between the first and the last cycle that counts as flat


class TinyPaced(Paced):
    """bench/paced.py against `tiny` (Paced itself targets the rollout benchmark's model)."""

    def __init__(self, port: int, work: Path, rate: float, max_s: float) -> None:
        self.log = work / "paced-model-soak.json"
        body_file = write_bodies(work / "bodies.jsonl")
        cmd = [PY, "-m", "bench.paced", f"http://127.0.0.1:{port}/v2/models/{SERVED}/infer", str(body_file)]
        cmd += ["--rate", str(rate), "--requests", str(int(rate * max_s) + 1), "--max-seconds", str(max_s)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([*cmd, "--log", str(self.log)], stdout=subprocess.PIPE, text=True, env=env)


def prepare(side: Path) -> None:
    """Publish both models once into a side store (export and checks off the server's CPU)."""
    torch.manual_seed(0)
    store = ModelStore(side)
    for name in (SERVED, ADDED):
        store.publish(name, PeersMLP().eval(), example_inputs=torch.randn(2, 64), formats=("onnx",))


def land(side: Path, store: Path, n: int) -> None:
    """`extra` appears in the store at once, complete: a copy in a hidden folder, then a rename."""
    staging = store / f".staging-{ADDED}-{n}"  # hidden: never listed as a model
    shutil.copytree(side / ADDED, staging)
    os.rename(staging, store / ADDED)


def remove(store: Path, n: int) -> None:
    """`extra` leaves the store at once (a rename), then its files are deleted."""
    gone = store / f".removed-{ADDED}-{n}"
    os.rename(store / ADDED, gone)
    shutil.rmtree(gone)


_BODY = json.dumps(bodies(1)[0]).encode()


def status(port: int, model: str) -> tuple[int, str]:
    """The HTTP status of one inference request (0: no HTTP answer) and the start of its body."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer", _BODY, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), r.read(300).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(300).decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def wait_status(server: ServerProcess, want: int, since: float, timeout: float, seen: dict[str, int]) -> float:
    """Seconds from `since` until a request to `extra` answers `want`; counts the other answers."""
    deadline, last = since + timeout, ""
    while time.monotonic() < deadline:
        got, last = status(server.port, ADDED)
        if got == want:
            return time.monotonic() - since
        seen[str(got)] = seen.get(str(got), 0) + 1
        time.sleep(0.02)
    server.check_alive()
    raise BenchError(
        f"{ADDED} did not answer {want} within {timeout:.0f} s (answers meanwhile: {seen}; the last: {last}); "
        f"last lines of the server's log {server.log}:\n{server.log_tail()}"
    )


def _hosts(pid: int, model: str) -> bool:
    """Whether a worker's metric files carry `model` as a label (a worker records what it hosts)."""
    label = json.dumps(model).encode()
    for path in open_files(pid):
        if path.endswith(f"_{pid}.db"):
            try:
                if label in Path(path).read_bytes():
                    return True
            except OSError:
                continue
    return False


def rss_by_role(server: ServerProcess) -> tuple[dict[str, float], dict[str, str]]:
    """RSS (MiB) by role, and role by PID. Inference workers are told apart by the models their
    metrics name: `tiny`'s own worker, and the pool worker (it hosts `extra` from the first cycle)."""
    out: dict[str, float] = {}
    pids: dict[str, str] = {}
    for pid, role in sorted(roles("modeldock", server.pid, server.port).items()):
        if role == "inference worker":
            role = f"{SERVED}'s worker" if _hosts(pid, SERVED) else "pool worker" if _hosts(pid, ADDED) else role
        key, n = role, 2
        while key in out:
            key, n = f"{role} {n}", n + 1
        out[key] = round(rss_mib(pid), 1)
        pids[str(pid)] = key
    return out, pids


def sample(server: ServerProcess, cycles: int, started: float) -> dict[str, Any]:
    server.check_alive()
    rss, pids = rss_by_role(server)
    return {"cycles": cycles, "t_s": round(time.monotonic() - started, 1), "rss_mib": rss, "pids": pids}


def _config(work: Path, poll_interval: float) -> Path:
    path = work / "modeldock-model-soak.yaml"
    # pool_workers stays at its default (1): models added while serving are what is measured.
    path.write_text(f"grpc_port: 0\npoll_interval: {poll_interval}\n")
    return path


def soak(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    side, store = work / "prepared", work / "models"
    prepare(side)
    store.mkdir()
    shutil.copytree(side / SERVED, store / SERVED)
    port = free_port()
    cmd = [PY, "-m", "server", "serve", "--store", str(store), "--config", str(_config(work, args.poll_interval))]
    server = ServerProcess("modeldock", [*cmd, "--port", str(port), "--cache-dir", str(work / "cache")], port, work)
    timeout = max(60.0, 20 * args.poll_interval)
    added: list[float] = []
    removed: list[float] = []
    seen: dict[str, dict[str, int]] = {"adding": {}, "removing": {}}
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes
    try:
        if status(port, ADDED)[0] != 404:
            raise BenchError(f"{ADDED} answers before it was published")
        client = TinyPaced(port, work, args.rate, 60 * args.max_minutes + 60)
        try:
            time.sleep(2.0)  # the client under way before the first landing
            while len(removed) < args.cycles and time.monotonic() < deadline:
                n = len(removed) + 1
                land(side, store, n)
                added.append(wait_status(server, 200, time.monotonic(), timeout, seen["adding"]))
                remove(store, n)
                removed.append(wait_status(server, 404, time.monotonic(), timeout, seen["removing"]))
                if n == 1 or n % args.every == 0 or n == args.cycles:
                    samples.append(sample(server, n, started))
                    print(json.dumps(samples[-1]), flush=True)
            if samples and samples[-1]["cycles"] != len(removed):
                samples.append(sample(server, len(removed), started))
            time.sleep(2.0)  # and still under way after the last removal
        finally:
            summary, log = client.finish()
        server.check_alive()
    finally:
        server.stop()
    failed: dict[str, int] = {}
    for s in log["status"]:
        if s != 200:
            failed[str(s)] = failed.get(str(s), 0) + 1
    ok = [lat for lat, s in zip(log["latency"], log["status"], strict=True) if s == 200]
    return {
        "cycles": len(removed),
        "seconds": time.monotonic() - started,
        "added_s": added,
        "removed_s": removed,
        "other_answers": seen,
        "client": {**summary, "p99_ms": p99(ok), "failed_by_status": failed},
        "samples": samples,
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _times(label: str, values: list[float]) -> str:
    return (
        f"- {label}: median {statistics.median(values):.2f} s, p95 {_pct(values, 0.95):.2f} s, max {max(values):.2f} s"
    )


def report(r: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    samples = r["samples"]
    first, last = samples[0], samples[-1]
    c = r["client"]
    by_status = ", ".join(f"{k}: {v}" for k, v in sorted(c["failed_by_status"].items())) or "none"
    others = "; ".join(
        f"{phase}: " + (", ".join(f"{k} x{v}" for k, v in sorted(found.items())) or "none")
        for phase, found in r["other_answers"].items()
    )
    lines = [
        "## Model soak: a model added and removed while another serves",
        "",
        f"`{command}` on {os.cpu_count()} cores (part of `make soak`): **{r['cycles']} cycles** in "
        f"{r['seconds']:.0f} s. `modeldock serve` with `grpc_port: 0`, `poll_interval: {args.poll_interval:g}` "
        f"and the default `pool_workers: 1` serves `{SERVED}` (MLP, ONNX) under an open-loop client at "
        f"{args.rate:g} req/s (one-row JSON). Each cycle a second MLP, `{ADDED}`, lands as a whole model folder "
        f"(copied into a hidden folder, then renamed into the store); once `POST /v2/models/{ADDED}/infer` "
        "answers 200 the folder is renamed away and deleted, and the cycle ends when the same request answers 404.",
        "",
        f"- requests to `{SERVED}`: {c['requests']:,}, failed: **{c['errors']}** (by status: {by_status}), "
        f"skipped by the client (too many in flight): {c['skipped']}, p99 {c['p99_ms']:.1f} ms",
        _times("landing -> first 200", r["added_s"]),
        _times("removal -> 404", r["removed_s"]),
        f"- other answers to `{ADDED}` while waiting (0: no HTTP answer): {others}",
    ]
    lines += ["", *sections.rss_tables(first, last, samples, WITHIN, "cycles", args.every)]
    return "\n".join(lines) + "\n"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=15.0, help="stop then, however many cycles were made")
    ap.add_argument("--rate", type=float, default=100.0, help=f"requests per second to {SERVED}")
    ap.add_argument("--every", type=int, default=10, help="read the RSS every this many cycles")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    if args.cycles < 2 or args.every < 1 or args.max_minutes <= 0 or args.rate <= 0:
        ap.error("need --cycles >= 2, --every >= 1 and positive --max-minutes and --rate")
    if args.poll_interval < 0.1:
        ap.error("--poll-interval must be at least 0.1 s (the server's lower bound)")
    return args


def main() -> None:
    args = _parse()
    command = "python -m bench.model_soak " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = soak(Path(tmp), args)
        except BenchError as e:
            sys.exit(f"bench.model_soak: {e}")
    if result["cycles"] < 2:
        sys.exit(f"bench.model_soak: only {result['cycles']} cycle(s) in {args.max_minutes:g} min")
    text = report(result, args, command)
    (out / "model-soak.jsonl").write_text("".join(json.dumps(s) + "\n" for s in result["samples"]))
    sections.splice(out / "reliability.md", "bench.model_soak", text)
    print(text)
    if result["client"]["errors"]:
        sys.exit(f"bench.model_soak: {result['client']['errors']} request(s) to {SERVED} failed")


if __name__ == "__main__":
    main()
