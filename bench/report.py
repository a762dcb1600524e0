"""The benchmark report: every sentence in it is built from the measured rows."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.servers import KINDS

Row = Mapping[str, Any]


def _vals(rows: list[Row], key: str, **match: Any) -> list[float]:
    return [r[key] for r in rows if key in r and all(r.get(k) == v for k, v in match.items())]


def _median(rows: list[Row], key: str, **match: Any) -> float:
    vals = _vals(rows, key, **match)
    return statistics.median(vals) if vals else float("nan")


def _spread(rows: list[Row], key: str, **match: Any) -> str:
    vals = _vals(rows, key, **match)
    if len(vals) < 2:
        return f"{_median(rows, key, **match):,.0f}"
    return f"{statistics.median(vals):,.0f} ({min(vals):,.0f}-{max(vals):,.0f})"


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    if value != value:  # NaN: not measured
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def summarize(rows: list[Row], meta: Mapping[str, Any]) -> str:
    kinds = [k for k in KINDS if any(r.get("kind") == k and "throughput" in r for r in rows)]
    lines = [
        "# Benchmarks",
        "",
        f"`{meta['command']}` on {meta['cores']} cores ({meta['cpu']}), Python {meta['python']}; "
        f"took {meta['seconds']:.0f} s. Each server ran alone, {meta['reps']} round(s) of "
        f"{', '.join(kinds)} (the order rotates each round); figures are medians over rounds, "
        "throughput with its range. The client (aiohttp + uvloop) runs in its own process on the same "
        f"cores, at most {meta['requests']:,} requests or {meta['max_s']:g} s per point, over 127.0.0.1. "
        "Servers listen on free ports and count as ready only when the process the benchmark started "
        "holds the listening socket.",
        "",
        f"Before each round's runs, every server's answer to each request body was checked against "
        f"in-process onnxruntime on the same input (atol 1e-4): {meta['checks']} checks passed.",
        "",
        "## What each side ran",
        "",
    ]
    for kind in kinds:
        procs = next((r["processes"] for r in rows if r.get("kind") == kind and "processes" in r), {})
        counted = ", ".join(f"{n} {role}" for role, n in sorted(procs.items()))
        lines.append(f"- **{kind}**: {meta['describe'][kind]}. Processes found: {counted or 'not recorded'}.")
    lines += [
        "",
        "| model | body | C | server | req/s | p50 ms | p99 ms | server CPU ms/req | client CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points = sorted({(r["model"], r["body"], r["concurrency"]) for r in rows if "body" in r})
    for model, body, c in points:
        for kind in kinds:
            m = {"model": model, "body": body, "concurrency": c, "kind": kind}
            if not _vals(rows, "throughput", **m):
                continue
            lines.append(
                f"| {model} | {body} | {c} | {kind} | {_spread(rows, 'throughput', **m)} | "
                f"{_median(rows, 'p50_ms', **m):.2f} | {_median(rows, 'p99_ms', **m):.2f} | "
                f"{_median(rows, 'server_cpu_ms_per_req', **m):.3f} | {_median(rows, 'client_cpu_ms_per_req', **m):.3f} |"
            )
    lines += _ratios(rows, kinds, points) + _by_role(rows, kinds) + _extras(rows, meta)
    if meta.get("plot"):
        lines += ["", "![throughput and p99 against concurrency](benchmarks.png)"]
    return "\n".join(lines) + "\n"


def _ratios(rows: list[Row], kinds: list[str], points: list[tuple[str, str, int]]) -> list[str]:
    peers = [k for k in kinds if k != "modeldock"]
    if "modeldock" not in kinds or not peers:
        return []
    head = " | ".join(f"req/s vs {p} | p50 vs {p}" for p in peers)
    lines = [
        "",
        "## Ratios (modeldock / peer, medians of the same run)",
        "",
        "Above 1 is better for req/s, below 1 is better for p50.",
        "",
        f"| model | body | C | {head} |",
        "|---|---|---|" + "---|---|" * len(peers),
    ]

    def ratio(key: str, peer: str, **m: Any) -> float:
        return _median(rows, key, kind="modeldock", **m) / _median(rows, key, kind=peer, **m)

    for model, body, c in points:
        m = {"model": model, "body": body, "concurrency": c}
        cells = " | ".join(f"{ratio('throughput', p, **m):.2f}x | {ratio('p50_ms', p, **m):.2f}x" for p in peers)
        lines.append(f"| {model} | {body} | {c} | {cells} |")
    mlp32, mlp1 = (
        {"model": "mlp", "body": "json", "concurrency": 32},
        {"model": "mlp", "body": "json", "concurrency": 1},
    )
    targets = [
        ("MLP, JSON, C=1 p50 vs baseline", ratio("p50_ms", "baseline", **mlp1), 1.5, False, "<="),
    ]
    if "triton" in kinds:
        targets = [
            ("MLP, JSON, C=32 req/s vs Triton", ratio("throughput", "triton", **mlp32), 1.2, True, ">="),
            ("MLP, JSON, C=32 p99 vs Triton", ratio("p99_ms", "triton", **mlp32), 1.0, False, "<="),
            *targets,
        ]
    lines += ["", "Targets (same run):", ""]
    for label, value, target, up, op in targets:
        shown = "not measured in this run" if value != value else f"**{value:.2f}x**"
        lines.append(f"- {label}: {shown} (target {op} {target:g}x: {_verdict(value, target, up)})")
    value = ratio("throughput", "baseline", **mlp32)
    if value == value:
        lines.append(f"- MLP, JSON, C=32 req/s vs baseline: **{value:.2f}x** (no target)")
    if "triton" in kinds:
        value = ratio("throughput", "triton", **mlp1)
        if value == value:
            lines.append(f"- MLP, JSON, C=1 req/s vs Triton: **{value:.2f}x** (no target)")
    return lines


def _by_role(rows: list[Row], kinds: list[str]) -> list[str]:
    m = {"model": "mlp", "body": "json", "concurrency": 32}
    lines = ["", "Server CPU per request by process (MLP, JSON, C=32, ms, medians):", ""]
    found = False
    for kind in kinds:
        per = [
            r["cpu_ms_per_req_by_role"]
            for r in rows
            if r.get("kind") == kind and "cpu_ms_per_req_by_role" in r and all(r.get(k) == v for k, v in m.items())
        ]
        if not per:
            continue
        found = True
        roles = sorted({role for p in per for role in p})
        cells = ", ".join(f"{role} {statistics.median(p.get(role, 0.0) for p in per):.3f}" for role in roles)
        lines.append(f"- {kind}: {cells}")
    return lines if found else []


def _extras(rows: list[Row], meta: Mapping[str, Any]) -> list[str]:
    lines: list[str] = [""]
    ceilings = {r["model"]: r for r in rows if r.get("kind") == "ceiling"}
    cnn = ceilings.get("cnn")
    got = _median(rows, "throughput", kind="modeldock", model="cnn", body="binary", concurrency=32)
    if cnn and got == got:
        share = got / cnn["samples_per_s"]
        lines.append(
            f"- CNN, binary, C=32: modeldock serves **{share:.2f}x** the in-process onnxruntime ceiling "
            f"({cnn['samples_per_s']:,.0f} samples/s at batch {cnn['batch']}, {meta['threads']} thread(s); target >= 0.9x: "
            f"{_verdict(share, 0.9, True)})"
        )
    swap = next((r for r in rows if r.get("kind") == "swap"), None)
    if swap:
        answered = ", ".join(f"v{v} ({n:,} answers)" for v, n in swap["answered"].items())
        missed = swap["landed_not_seen"]
        ratio = swap["p99_swap_ms"] / swap["p99_steady_ms"]
        lines.append(
            f"- Swap under load (MLP, JSON, C=32, modeldock): {len(swap['landed'])} version(s) landed, one every "
            f"{swap['landing_every_s']:g} s; responses came from {answered}: **{swap['swaps_seen']} swap(s) seen in "
            f"the responses' model_version**"
            + (f", landed but never answered: {missed}" if missed else "")
            + f"; {swap['errors']} errors; p99 {swap['p99_swap_ms']:.2f} ms against {swap['p99_steady_ms']:.2f} ms "
            f"steady: **{ratio:.2f}x** (target <= 2x: {_verdict(ratio, 2.0, False)})"
        )
    idle = next((r for r in rows if "idle_cpu_pct" in r), None)
    if idle:
        pct = idle["idle_cpu_pct"]
        lines.append(f"- Idle modeldock server: **{pct:.2f}%** of one core (target < 1%: {_verdict(pct, 1.0, False)})")
    mem = [r for r in rows if "memory_mib" in r]
    if mem:
        lines += ["", "Memory (RSS) of every server process, after its first round's runs:", ""]
        for r in mem:
            total = sum(v for v in r["memory_mib"].values())
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r["memory_mib"].items())
            lines.append(f"- {r['kind']} ({r['model']}): {total:.0f} MiB in all: {parts}")
    if ceilings:
        lines += ["", f"In-process ceilings (onnxruntime, {meta['threads']} intra-op thread(s), best batch):", ""]
        lines += [f"- {m}: {r['samples_per_s']:,.0f} samples/s at batch {r['batch']}" for m, r in ceilings.items()]
    return lines


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in KINDS:
        m = {"kind": kind, "model": "mlp", "body": "json"}
        cs = sorted({r["concurrency"] for r in rows if all(r.get(k) == v for k, v in m.items()) and "throughput" in r})
        if not cs:
            continue
        ax1.plot(cs, [_median(rows, "throughput", concurrency=c, **m) for c in cs], marker="o", label=kind)
        ax2.plot(cs, [_median(rows, "p99_ms", concurrency=c, **m) for c in cs], marker="o", label=kind)
    ax1.set(title="MLP, JSON: throughput", xlabel="concurrency", ylabel="req/s", xscale="log")
    ax2.set(title="MLP, JSON: p99 latency", xlabel="concurrency", ylabel="ms", xscale="log")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
