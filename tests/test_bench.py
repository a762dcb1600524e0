"""The benchmark runs end to end on a tiny budget (its figures are in docs/, not asserted here),
and it only measures servers it started itself."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import sections
from bench.common import BenchError, ServerProcess

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
    # Process counts matched: the baseline's uvicorn workers = modeldock's HTTP servers + workers.
    procs = {row["kind"]: row["processes"] for row in rows if "processes" in row}
    serving = procs["modeldock"]["HTTP server"] + procs["modeldock"]["inference worker"]
    assert procs["baseline"]["uvicorn worker"] == serving == 2
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| mlp | json | 1 | modeldock |" in report and "| mlp | json | 8 | baseline |" in report
    assert "Idle modeldock server" in report and "4 checks passed" in report  # 2 bodies x 2 servers
    assert "## Ratios (modeldock / peer" in report and "| mlp | json | 1 |" in report


def test_server_that_dies_fails_with_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"]
    with pytest.raises(BenchError, match=r"exited with status 3(.|\n)*model file is corrupt"):
        ServerProcess("broken", cmd, 1, tmp_path, ready_s=30)


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_someone_elses_server_on_the_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        port = other.server_address[1]
        cmd = [sys.executable, "-c", "import time; time.sleep(60)"]  # alive, never listens
        with pytest.raises(BenchError, match=f"not ready after 3 s; port {port} is held by another process"):
            ServerProcess("silent", cmd, port, tmp_path, ready_s=3)
    finally:
        other.shutdown()
        other.server_close()


def test_triton_peer_without_triton_installed_says_how_to_get_it(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--peers", "triton", "--triton-home", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "Triton is not installed" in r.stderr and "make bench PEERS=triton" in r.stderr


def test_rollout_bench_times_a_promotion_and_adds_its_section(tmp_path: Path) -> None:
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nText someone wrote.\n")
    short = ["--poll-intervals", "0.5", "--rounds", "1", "--steady", "3", "--no-quiet", "--no-canary"]
    r = subprocess.run(
        [sys.executable, "-m", "bench.rollout", "--out", str(tmp_path), *short],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = [json.loads(line) for line in (tmp_path / "benchmarks-rollout.jsonl").read_text().splitlines()]
    (landing,) = run["rounds"]
    # The retrain was promoted under the default settings and answered: seen in the responses.
    assert landing["result"] == "promoted" and landing["promotion_s"] is not None
    assert run["client"]["errors"] == 0 and run["requests_by_phase"]["steady"] > 0
    assert run["requests_by_phase"]["shadow"] > 0  # requests sent while the metadata said shadow
    doc = (tmp_path / "benchmarks.md").read_text()
    assert doc.startswith("# Benchmarks\n\nText someone wrote.\n") and doc.count("## Rollout") == 1
    assert "| 0.5 s | shadow | 200 req/s | 1 | 1 / 0 |" in doc


def test_generated_sections_are_replaced_in_place_and_survive_a_rewrite(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nold figures\n")
    sections.splice(doc, "bench.rollout", "## Rollout\n\nfirst run\n")
    sections.splice(doc, "bench.rollout", "## Rollout\n\nsecond run\n")
    assert doc.read_text().count("## Rollout") == 1 and "second run" in doc.read_text()
    sections.write_keeping(doc, "# Benchmarks\n\nnew figures\n")  # what `make bench` does
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nnew figures\n") and "old figures" not in text
    assert "second run" in text and "first run" not in text
