"""`make soak`, second part: many promotions under load, and the memory of every server process.

    python -m bench.swap_soak [--promotions 200] [--max-minutes 15] [--rate 200] [--every 20] [--out docs]

The MLP on `modeldock serve` (127.0.0.1, a free port) under an open-loop client at `--rate`
req/s (bench/paced.py). Repeatedly a retrain lands (one of 4 prepared ones, bench/retrain.py),
then the next lands as soon as an unversioned request is answered by it. To keep 200 promotions
to a few minutes the config shortens the trial: `poll_interval` `--poll-interval` (0.5 s) and
`rollout: {min_rows: --min-rows (32)}`; every other rollout setting is the default (shadow). The
store keeps the newest 3 versions (older ones are deleted, as a retention job would), so memory
that grows comes from the reloads rather than from a growing store. The RSS of every server
process (main, HTTP server, inference worker, queue manager, ...) is read after the first
promotion and every `--every` promotions. Writes the generated "Swap soak" section of
<out>/reliability.md and every sample to <out>/swap-soak.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import sections, servers
from bench.common import BenchError, ServerProcess
from bench.retrain import MODEL, Paced, Prepared, Watch, decisions, infer_version, land, p99, prepare, rss_by_role
from bench.servers import roles

KEEP = 3  # versions kept in the store


def wait_answering(server: ServerProcess, watch: Watch, version: int, timeout: float) -> str:
    """'promoted' once an unversioned request is answered by `version`, or 'rejected'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if infer_version(server.port) == str(version):
            return "promoted"
        if any(c["status"].startswith(f"version {version} rejected") for c in watch.changes[-5:]):
            return "rejected"
        time.sleep(0.05)
    raise BenchError(f"version {version} neither answered nor was rejected within {timeout:.0f} s")


def prune(store: Path, newest: int) -> None:
    for p in (store / MODEL).iterdir():
        if p.name.isdigit() and int(p.name) <= newest - KEEP:
            shutil.rmtree(p)


def sample(server: ServerProcess, promotions: int, started: float) -> dict[str, Any]:
    server.check_alive()
    return {
        "promotions": promotions,
        "t_s": round(time.monotonic() - started, 1),
        "rss_mib": rss_by_role(server),
        "pids": {str(pid): role for pid, role in roles("modeldock", server.pid, server.port).items()},
    }


def soak(prepared: Prepared, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = work / "models"
    land(prepared, 1, store)
    setup = servers.Setup(poll_interval=args.poll_interval, rollout=_rollout(args))
    server = servers.start("modeldock", setup, store, MODEL, work)
    samples: list[dict[str, Any]] = []
    times: list[float] = []
    rejected: list[int] = []
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes
    try:
        watch = Watch(server.port, every=0.2).start()
        client = Paced(server.port, work, args.rate, 60 * args.max_minutes + 60, "swap-soak")
        try:
            attempt = 0
            while len(times) < args.promotions and time.monotonic() < deadline:
                version = land(prepared, prepared.retrains[attempt % len(prepared.retrains)], store)
                attempt += 1
                landed = time.monotonic()
                result = wait_answering(server, watch, version, timeout=max(60.0, 20 * args.poll_interval))
                if result == "rejected":
                    rejected.append(version)
                    continue
                times.append(time.monotonic() - landed)
                prune(store, version)
                if len(times) == 1 or len(times) % args.every == 0:
                    samples.append(sample(server, len(times), started))
                    print(json.dumps(samples[-1]), flush=True)
            if samples and samples[-1]["promotions"] != len(times):
                samples.append(sample(server, len(times), started))
        finally:
            summary, log = client.finish()
            watch.stop()
        counts = decisions(server.port)
        server.check_alive()
    finally:
        server.stop()
    ok = [lat for lat, s in zip(log["latency"], log["status"], strict=True) if s == 200]
    return {
        "promotions": len(times),
        "rejected": rejected,
        "decisions": counts,
        "seconds": time.monotonic() - started,
        "promotion_s": times,
        "client": {**summary, "p99_ms": p99(ok), "versions_seen": len(set(log["version"]) - {""})},
        "samples": samples,
    }


def _rollout(args: argparse.Namespace) -> str:
    return '{mode: "off"}' if args.mode == "off" else f"{{min_rows: {args.min_rows}}}"


def _trial(args: argparse.Namespace) -> str:
    if args.mode == "off":
        return f'`poll_interval: {args.poll_interval:g}` and `rollout: {{mode: "off"}}` (plain hot swaps, no trial)'
    return (
        f"Shortened trial to fit in minutes: `poll_interval: {args.poll_interval:g}` and `rollout: {{min_rows: "
        f"{args.min_rows}}}` (other rollout settings default: shadow mode)"
    )


def report(r: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    samples = r["samples"]
    first, last = samples[0], samples[-1]
    times = sorted(r["promotion_s"])
    c = r["client"]
    lines = [
        "## Swap soak: memory across promotions",
        "",
        f"`{command}` on {os.cpu_count()} cores (part of `make soak`): **{r['promotions']} promotions** in "
        f"{r['seconds']:.0f} s under an open-loop client at {args.rate:g} req/s (one-row JSON, MLP, ONNX). Each "
        "round a retrained version lands and the next lands once an unversioned request is answered by it. "
        f"{_trial(args)}; the store keeps the newest {KEEP} versions, as a retention job would.",
        "",
        f"- requests: {c['requests']:,}, failed: {c['errors']}, p99 {c['p99_ms']:.1f} ms; versions that answered: "
        f"{c['versions_seen']}; rejected by the shadow: {len(r['rejected'])}; decisions counted by the server: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["decisions"].items())),
        f"- landing -> answering: median {statistics.median(times):.1f} s, p95 "
        f"{times[min(len(times) - 1, int(0.95 * len(times)))]:.1f} s, max {times[-1]:.1f} s",
    ]
    lines += ["", *sections.rss_tables(first, last, samples, 5, "promotions", args.every)]
    return "\n".join(lines) + "\n"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--promotions", type=int, default=200)
    ap.add_argument("--max-minutes", type=float, default=15.0, help="stop then, however many promotions were made")
    ap.add_argument("--rate", type=float, default=200.0, help="client requests per second")
    ap.add_argument("--every", type=int, default=20, help="read the RSS every this many promotions")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--min-rows", type=int, default=32, help="the shadow's min_rows (mode shadow)")
    ap.add_argument("--mode", choices=("shadow", "off"), default="shadow", help="rollout mode; off: plain hot swaps")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    if args.promotions < 2 or args.every < 1 or args.max_minutes <= 0 or args.rate <= 0 or args.min_rows < 1:
        ap.error("need --promotions >= 2, --every >= 1, --min-rows >= 1 and positive --max-minutes and --rate")
    if args.poll_interval < 0.1:
        ap.error("--poll-interval must be at least 0.1 s (the server's lower bound)")
    return args


def main() -> None:
    args = _parse()
    command = "python -m bench.swap_soak " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            result = soak(prepare(work / "prepared", retrains=4), work, args)
        except BenchError as e:
            sys.exit(f"bench.swap_soak: {e}")
    if result["promotions"] < 2:
        sys.exit(f"bench.swap_soak: only {result['promotions']} promotion(s) in {args.max_minutes:g} min")
    text = report(result, args, command)
    (out / "swap-soak.jsonl").write_text("".join(json.dumps(s) + "\n" for s in result["samples"]))
    sections.splice(out / "reliability.md", "bench.swap_soak", text)
    print(text)


if __name__ == "__main__":
    main()
