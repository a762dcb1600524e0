"""Triton's load tool runs against modeldock over HTTP and gRPC, without any proxy: it reads the
model's configuration and statistics (Triton's extensions) before and around its measurements.

perf_analyzer is installed by `scripts/install_perf_analyzer.sh` (or found through the
PERF_ANALYZER environment variable); without it these tests are skipped, saying how to install it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.grpc.conftest import GrpcServer, start_grpc_server

ROOT = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("PERF_ANALYZER", ROOT / ".venv" / "peers" / "perf_analyzer" / "perf_analyzer"))

pytestmark = pytest.mark.skipif(
    not BINARY.exists(), reason=f"perf_analyzer not installed (scripts/install_perf_analyzer.sh): {BINARY}"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    base = tmp_path_factory.mktemp("perf")
    store = ModelStore(base / "models")
    publish_tiny(store)
    srv = start_grpc_server(base, store.root, {"models": {"tiny": {"max_batch_size": 8}}})
    try:
        srv.http.wait_until("/v2/health/ready")
        yield srv
    finally:
        srv.http.stop()
        srv.port_holder.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_throughput(server: GrpcServer, protocol: str) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http.url.removeprefix("http://")
    args = [str(BINARY), "-m", "tiny", "-i", protocol, "-u", url, "--concurrency-range", "1:2:1"]
    args += ["--measurement-interval", "500", "--max-trials", "6", "--stability-percentage", "50"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rates = [float(x) for x in re.findall(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec", done.stdout)]
    assert len(rates) == 2 and all(r > 0 for r in rates), done.stdout[-3000:]
    assert "Successful request count" in done.stdout  # it read our statistics
