"""Two servers on one cache dir: each /metrics counts only its own models, whatever the other does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.ops.harness import Server

ROOT = Path(__file__).resolve().parents[2]

REQUESTS = "modeldock_requests_total"
VERSION = "modeldock_model_version"


def models_in(found: dict[tuple[tuple[str, str], ...], float]) -> set[str]:
    return {dict(labels)["model"] for labels in found}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def test_two_servers_share_a_cache_dir_without_sharing_metrics(tmp_path: Path, servers: list[Server]) -> None:
    alpha, beta = ModelStore(tmp_path / "store-a"), ModelStore(tmp_path / "store-b")
    publish_tiny(alpha, "alpha", seed=0)
    publish_tiny(beta, "beta", seed=1)
    publish_tiny(beta, "beta", seed=2)
    cache = tmp_path / "shared-cache"

    # A folder left by an instance that was killed: its pid is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = cache / "metrics" / f"{gone.pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"x" * 64)

    a = Server(alpha.root, cache, tmp_path / "a.log")
    servers.append(a)
    a.wait_ready()
    for _ in range(3):
        assert a.infer("alpha").status_code == 200
    assert not stale.exists(), "the dead instance's metrics folder was kept"
    assert models_in(a.metrics(REQUESTS)) == {"alpha"}
    assert {dict(k)["version"]: v for k, v in a.metrics(REQUESTS).items()} == {"1": 3.0}

    b = Server(beta.root, cache, tmp_path / "b.log")
    servers.append(b)
    b.wait_ready()
    for _ in range(2):
        assert b.infer("beta").status_code == 200
    # The first server's counts survived the second one's start and exclude its traffic.
    assert a.infer("alpha").status_code == 200
    assert {(dict(k)["model"], dict(k)["version"]): v for k, v in a.metrics(REQUESTS).items()} == {("alpha", "1"): 4.0}
    assert {(dict(k)["model"], dict(k)["version"]): v for k, v in b.metrics(REQUESTS).items()} == {("beta", "2"): 2.0}
    assert models_in(a.metrics(VERSION)) == {"alpha"}
    assert {dict(k)["model"]: v for k, v in b.metrics(VERSION).items()} == {"beta": 2.0}

    assert len(list((cache / "metrics").iterdir())) == 2, "each instance has its own folder"
    b_folder = {p.name for p in (cache / "metrics").iterdir()}
    assert b.stop() == 0
    left = {p.name for p in (cache / "metrics").iterdir()}
    assert len(left) == 1 and left < b_folder, f"the stopped instance left its folder: {left}"
    # The first server still answers and still counts, from its own folder.
    assert a.infer("alpha").status_code == 200
    assert {(dict(k)["model"], dict(k)["version"]): v for k, v in a.metrics(REQUESTS).items()} == {("alpha", "1"): 5.0}
    assert a.stop() == 0
    assert list((cache / "metrics").iterdir()) == []


def test_one_value_class_per_process_so_no_metrics_file_is_mapped_twice(tmp_path: Path) -> None:
    # Counters made before metrics() (the payload log's, the gRPC servicer's) and those made by
    # it must share one value class: two would each map the same .db file and overwrite entries.
    script = f"""
import os, prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector
from server import metrics as m
m.setup_multiprocess({str(tmp_path)!r})
early = Counter("early_total", "made before metrics()")
first = prometheus_client.values.ValueClass
m.metrics().requests.labels("m", "1", "200").inc(3)
assert prometheus_client.values.ValueClass is first, "the value class changed"
early.inc(2)
if os.fork() == 0:  # a forked HTTP process writes its own file under its own pid
    m.metrics().requests.labels("m", "1", "200").inc(4)
    os._exit(0)
os.wait()
registry = CollectorRegistry()
MultiProcessCollector(registry)
got = {{(s.name, s.labels.get("code")): s.value for f in registry.collect() for s in f.samples}}
assert got[("early_total", None)] == 2 and got[("modeldock_requests_total", "200")] == 7, got
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
