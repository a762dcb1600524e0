"""Two servers on one cache dir: each /metrics counts only its own models, whatever the other does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.ops.harness import Server

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
