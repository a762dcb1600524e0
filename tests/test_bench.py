"""The benchmark runs end to end on a tiny budget (its figures are in docs/, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_writes_its_report(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "benchmarks.jsonl").read_text().splitlines()]
    runs = [row for row in rows if "throughput" in row]
    assert {row["kind"] for row in runs} == {"baseline", "modeldock"}
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in runs)
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| mlp | json | 1 | modeldock |" in report and "Idle server" in report
