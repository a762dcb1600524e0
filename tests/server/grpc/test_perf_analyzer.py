"""Triton's load tool runs against modeldock over HTTP and gRPC, without any proxy: it reads the
model's configuration and statistics (Triton's extensions) before and around its measurements.
It drives `make serve`'s digits demo too, with the shipped image as its input data.

perf_analyzer is installed by `scripts/install_perf_analyzer.sh` (or found through the
PERF_ANALYZER environment variable); without it these tests are skipped, saying how to install it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.grpc.conftest import GrpcServer, serving_grpc

ROOT = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("PERF_ANALYZER", ROOT / ".venv" / "peers" / "perf_analyzer" / "perf_analyzer"))

needs_binary = pytest.mark.skipif(
    not BINARY.exists(), reason=f"perf_analyzer not installed (scripts/install_perf_analyzer.sh): {BINARY}"
)
IMAGE_DATA = ROOT / "docs" / "digit-7.perf_analyzer.json"  # --input-data for the digits demo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    base = tmp_path_factory.mktemp("perf")
    store = ModelStore(base / "models")
    publish_tiny(store)
    with serving_grpc(base, store.root, {"models": {"tiny": {"max_batch_size": 8}}}) as srv:
        yield srv


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, digits_store: Path) -> Iterator[GrpcServer]:
    """`make serve`: the digits demo behind its image handler, configured by serve.yaml."""
    base = tmp_path_factory.mktemp("perf-demo")
    shutil.copytree(digits_store, base / "models")
    with serving_grpc(base, base / "models", yaml.safe_load((ROOT / "serve.yaml").read_text())) as srv:
        yield srv


def measure(server: GrpcServer, protocol: str, model: str, concurrency: str, *extra: str) -> str:
    """perf_analyzer's report of a short run, after checking it succeeded at every concurrency."""
    url = server.grpc_url if protocol == "grpc" else server.http.url.removeprefix("http://")
    args = [str(BINARY), "-m", model, "-i", protocol, "-u", url, "--concurrency-range", concurrency, *extra]
    args += ["--measurement-interval", "500", "--max-trials", "6", "--stability-percentage", "50"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rates = [float(x) for x in re.findall(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec", done.stdout)]
    assert len(rates) == 2 and all(r > 0 for r in rates), done.stdout[-3000:]
    assert "Successful request count" in done.stdout  # it read our statistics
    return done.stdout


@needs_binary
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_throughput(server: GrpcServer, protocol: str) -> None:
    measure(server, protocol, "tiny", "1:2:1")


@needs_binary
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_the_digits_demo_with_the_shipped_image(demo: GrpcServer, protocol: str) -> None:
    """The issue's command against `make serve`, plus the image: perf_analyzer's own random strings
    are not images, and the handler answers them 400 as it should."""
    measure(demo, protocol, "digits", "1:32:31", "--input-data", str(IMAGE_DATA))
    stats = demo.http.get("/v2/models/digits/stats").json()["model_stats"]
    assert sum(s["inference_stats"]["fail"]["count"] for s in stats) == 0, stats
    assert sum(s["inference_stats"]["success"]["count"] for s in stats) > 0, stats


def test_the_shipped_input_data_is_the_readme_image() -> None:
    """perf_analyzer takes a BYTES element as its wire form, base64: the 4-byte length, then the bytes."""
    blob = base64.b64decode(json.loads(IMAGE_DATA.read_text())["data"][0]["image"]["b64"])
    png = (ROOT / "docs" / "digit-7.png").read_bytes()
    assert blob == len(png).to_bytes(4, "little") + png
