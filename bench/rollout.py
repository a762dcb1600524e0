"""`make bench-rollout`: how long a retrained version takes to answer under modeldock's DEFAULT
rollout, and what its trial costs the clients.

    python -m bench.rollout [--out docs] [--poll-intervals 2,0.5] [--rounds 3] [--rate 200]
                            [--steady 10] [--no-quiet] [--no-canary]

Per poll interval (the only setting changed; rollout settings are the server's defaults), on the
MLP (ONNX, 127.0.0.1, free ports):
- shadow (the default mode): an open-loop client at `--rate` req/s (bench/paced.py) runs while,
  after `--steady` s, a retrain lands (`--rounds` times, each after the previous was decided).
  Time to promotion: from the landing (the rename returned) to the first response whose
  `model_version` is the new version. p99 during shadow (the span in which the model's metadata
  says `phase: shadow`) against steady state (before the first landing), same client run;
- then, on the same server with no traffic at all, one more retrain: a quiet model is decided
  after `decide_after_s` on the stored examples; reported are the decision (from the metadata)
  and the first answer of a request sent after it;
- canary (`rollout: {mode: canary}`, the rest default): the load run again, with p99 during
  shadow and during canary against steady state.
Writes the "Rollout" section of <out>/benchmarks.md and every measured row to
<out>/benchmarks-rollout.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import sections, servers
from bench.common import BenchError, ServerProcess
from bench.retrain import MODEL, Paced, Prepared, Watch, decisions, infer_version, land, p99, prepare
from server.config import RolloutConfig

WARMUP_S = 1.0  # the client's first second (connections opening) is not steady state


def load_run(prepared: Prepared, work: Path, poll: float, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One server, one paced client: steady state, then `rounds` retrains landing one by one."""
    tag = f"{mode}-{poll:g}"
    where = work / tag  # own cache folder: decisions of an earlier server must not carry over
    where.mkdir()
    store = where / "models"
    land(prepared, 1, store)
    rollout = '{mode: "canary"}' if mode == "canary" else ""
    server = servers.start("modeldock", servers.Setup(poll_interval=poll, rollout=rollout), store, MODEL, where)
    try:
        watch = Watch(server.port).start()
        budget = args.steady + args.rounds * 150 + 30
        client = Paced(server.port, where, args.rate, budget, tag)
        started = time.time()
        try:
            time.sleep(args.steady)
            rounds = []
            for k in range(args.rounds):
                version = land(prepared, prepared.retrains[k % len(prepared.retrains)], store)
                landed = time.time()
                result, decided = watch.wait_decided(version, timeout=120)
                time.sleep(max(2.0, 2 * poll))  # the workers swap within 0.5 s; the client sees it
                rounds.append({"version": version, "landed": landed, "result": result, "decided": decided})
            server.check_alive()
        finally:
            summary, log = client.finish()
        counts = decisions(server.port)
        quiet = quiet_run(prepared, server, store, watch) if mode == "shadow" and not args.no_quiet else None
        watch.stop()
        server.check_alive()
    finally:
        server.stop()
    return analyse(tag, poll, mode, started, rounds, watch, summary, log, counts, quiet, args.rate)


def quiet_run(prepared: Prepared, server: ServerProcess, store: Path, watch: Watch) -> dict[str, Any]:
    """A retrain lands on a model nobody calls; decided from the examples after decide_after_s."""
    time.sleep(3.0)
    version = land(prepared, prepared.retrains[-1], store)
    landed = time.time()
    result, decided = watch.wait_decided(version, timeout=RolloutConfig().decide_after_s + 90)
    first = None
    if result == "promoted":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and infer_version(server.port) != str(version):
            time.sleep(0.05)
        first = time.time()
    return {
        "version": version,
        "result": result,
        "decided_s": decided - landed,
        "first_answer_s": first - landed if first else None,
        "status": next(c["status"] for c in watch.changes if c["status"].startswith(f"version {version} {result}")),
    }


def analyse(
    tag: str,
    poll: float,
    mode: str,
    started: float,
    rounds: list[dict[str, Any]],
    watch: Watch,
    summary: dict[str, Any],
    log: dict[str, list[Any]],
    counts: dict[str, float],
    quiet: dict[str, Any] | None,
    rate: float,
) -> dict[str, Any]:
    rows = list(zip(log["sent"], log["latency"], log["status"], log["version"], strict=True))
    first_landing = rounds[0]["landed"] if rounds else float("inf")
    begin = (rows[0][0] if rows else started) + WARMUP_S  # from the client's first request
    steady = [lat for t, lat, s, _ in rows if s == 200 and begin <= t < first_landing]
    spans: dict[str, list[tuple[float, float]]] = {"shadow": [], "canary": []}
    ends = [r["landed"] for r in rounds[1:]] + [float("inf")]
    for r, end in zip(rounds, ends, strict=True):
        phases = watch.phases(r["version"])
        for phase, span in phases.items():
            spans[phase].append(span)
        mine = [(t + lat, v == str(r["version"])) for t, lat, s, v in rows if s == 200 and r["landed"] <= t < end]
        new = [done for done, ok in mine if ok]
        r["promotion_s"] = min(new) - r["landed"] if new else None
        # In canary mode the candidate answers a share before it is promoted: also when the
        # last answer of an older version came (after it, only the new one answered).
        old = [done for done, ok in mine if not ok]
        r["only_new_s"] = (max(old, default=r["landed"]) - r["landed"]) if new else None
        r["decided_s"] = r["decided"] - r["landed"]
        seen = [c["t"] for c in watch.changes if c["candidate"] == str(r["version"])]
        r["candidate_s"] = min(seen) - r["landed"] if seen else None
        r["phase_s"] = {phase: round(b - a, 2) for phase, (a, b) in phases.items()}

    def within(phase: str) -> list[float]:
        return [lat for t, lat, s, _ in rows if s == 200 and any(a <= t < b for a, b in spans[phase])]

    p99s = {"steady": p99(steady), "shadow": p99(within("shadow")), "canary": p99(within("canary"))}
    sizes = {"steady": len(steady), "shadow": len(within("shadow")), "canary": len(within("canary"))}
    return {
        "tag": tag,
        "poll_interval": poll,
        "mode": mode,
        "rate": rate,
        "client": summary,
        "rounds": rounds,
        "p99_ms": p99s,
        "requests_by_phase": sizes,
        "decisions": counts,
        "quiet": quiet,
    }


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    found = [x[key] for x in rounds if x[key] is not None]
    return statistics.median(found) if found else float("nan")


def _p99(run: dict[str, Any], phase: str) -> str:
    n = run["requests_by_phase"][phase]
    return f"{run['p99_ms'][phase]:.1f} ({n:,})" if n else "-"


def _ratio(run: dict[str, Any], phase: str) -> str:
    p = run["p99_ms"]
    return f"{p[phase] / p['steady']:.2f}x" if run["requests_by_phase"][phase] else "-"


def report(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cfg = RolloutConfig()
    lines = [
        "## Rollout",
        "",
        f"`{meta['command']}` on {meta['cores']} cores, took {meta['seconds']:.0f} s. The MLP (ONNX) on "
        f"`modeldock serve` with the **default rollout settings** (mode {cfg.mode}, min_rows {cfg.min_rows}, "
        f"decide_after_s {cfg.decide_after_s:g}, min_agreement {cfg.min_agreement:g}, max_latency_ratio "
        f"{cfg.max_latency_ratio:g}; canary runs: mode canary, canary_share {cfg.canary_share:g}, canary_requests "
        f"{cfg.canary_requests}); only `poll_interval` changes. Load: an open-loop client (`bench/paced.py`) at "
        f"{meta['rate']:g} req/s of one-row JSON requests over 64 different inputs. Each retrain is the MLP with its "
        f"weights nudged (lowest arg-max agreement between any two versions on those inputs: "
        f"{meta['agreement']:.3f}), published beforehand with `ModelStore.publish` and landed by an atomic rename, "
        "as `publish` lands one; each lands after the previous one was decided.",
        "",
        "Time to promotion: from the landing to the first response whose `model_version` is the new version "
        "(per retrain; median and max over the retrains). Candidate: when the metadata first named it; "
        "decided: when it first said promoted or rejected; only it answers: the last answer of an older version "
        "(in canary mode the candidate answers a share of the requests before it is promoted). Without traffic, "
        "the first answer is that of a request sent once the metadata said promoted.",
        "",
        "| poll interval | mode | traffic | retrains | promoted / rejected | landing -> candidate s | "
        "landing -> decided s | **landing -> first answer s** (median, max) | landing -> only it answers s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rounds = r["rounds"]
        done = [x["promotion_s"] for x in rounds if x["promotion_s"] is not None]
        promoted = sum(x["result"] == "promoted" for x in rounds)
        first = f"**{statistics.median(done):.1f}**, {max(done):.1f}" if done else "never"
        only = f"{_median(rounds, 'only_new_s'):.1f}" if done else "never"
        lines.append(
            f"| {r['poll_interval']:g} s | {r['mode']} | {r['rate']:g} req/s | {len(rounds)} | "
            f"{promoted} / {len(rounds) - promoted} | {_median(rounds, 'candidate_s'):.1f} | {_median(rounds, 'decided_s'):.1f} | {first} | "
            f"{only} |"
        )
        q = r["quiet"]
        if q:
            lines.append(
                f"| {r['poll_interval']:g} s | {r['mode']} | none | 1 | {int(q['result'] == 'promoted')} / "
                f"{int(q['result'] != 'promoted')} | | {q['decided_s']:.1f} | **{_s(q['first_answer_s'])}** | |"
            )
    quiet = [r["quiet"] for r in runs if r["quiet"]]
    if quiet:
        lines += [
            "",
            f"With no traffic the shadow compares only both versions' stored examples (fewer than min_rows), so the "
            f"model is decided once decide_after_s ({cfg.decide_after_s:g} s) has passed, at the next poll; "
            f"last status: `{quiet[-1]['status']}`.",
        ]
    lines += [
        "",
        "Client latency in the same client run (p99 ms, requests counted): steady state (before the first "
        "landing), while the metadata said `phase: shadow`, and while it said `phase: canary`.",
        "",
        "| poll interval | mode | p99 steady | p99 shadow | p99 canary | shadow / steady | canary / steady | "
        "requests | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cells = " | ".join(_p99(r, k) for k in ("steady", "shadow", "canary"))
        ratios = " | ".join(_ratio(r, k) for k in ("shadow", "canary"))
        lines.append(
            f"| {r['poll_interval']:g} s | {r['mode']} | {cells} | {ratios} | {r['client']['requests']:,} | "
            f"{r['client']['errors']} |"
        )
    lines += [
        "",
        '`make bench`\'s hot-swap phase (`bench/swap.py`) runs with `rollout: {mode: "off"}`: it lands unrelated '
        "copies and measures the swap itself, which a rollout trial would otherwise precede.",
    ]
    return "\n".join(lines) + "\n"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--poll-intervals", default="2,0.5", help="comma-separated seconds")
    ap.add_argument("--rounds", type=int, default=3, help="retrains landing under load, per server")
    ap.add_argument("--rate", type=float, default=200.0, help="client requests per second")
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of steady state before the first landing")
    ap.add_argument("--no-quiet", action="store_true", help="skip the no-traffic run (it takes decide_after_s)")
    ap.add_argument("--no-canary", action="store_true", help="skip the canary-mode server")
    args = ap.parse_args()
    try:
        args.polls = [float(p) for p in args.poll_intervals.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--poll-intervals: expected comma-separated seconds, got {args.poll_intervals!r}")
    if not args.polls or min(args.polls) < 0.1 or args.rounds < 1 or args.rate <= 0 or args.steady <= WARMUP_S:
        ap.error(f"need poll intervals >= 0.1, --rounds >= 1, --rate > 0 and --steady > {WARMUP_S:g}")
    return args


def main() -> None:
    args = _parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            prepared = prepare(work / "prepared", retrains=max(3, args.rounds + 1))
            for poll in args.polls:
                for mode in ("shadow", "canary")[: 1 if args.no_canary else 2]:
                    run = load_run(prepared, work, poll, mode, args)
                    print(json.dumps(run), flush=True)
                    runs.append(run)
        except BenchError as e:
            sys.exit(f"bench.rollout: {e}")
    meta = {
        "command": "python -m bench.rollout " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "seconds": time.monotonic() - started,
        "rate": args.rate,
        "agreement": prepared.agreement,
    }
    text = report(runs, meta)
    (out / "benchmarks-rollout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    sections.splice(out / "benchmarks.md", "bench.rollout", text)
    print(text)


if __name__ == "__main__":
    main()
