"""A store and a config file as the first release wrote them (tests/data/compat) still serve,
with the same answers, metadata and statuses that release gave (recorded in expected.json).

When a later change alters what a client sees here, this test says so: update expected.json
only together with an upgrade note in the README.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.server.conftest import free_port

DATA = Path(__file__).resolve().parents[1] / "data" / "compat"
ROOT = DATA.parents[2]
KEY = {"x-api-key": "compat-key"}
VOLATILE = {"load_seconds"}  # timings differ run to run
# What a later release changed on purpose, each with its README upgrade note: the recorded
# answer is kept as the first release gave it, and the test applies these changes to it.
UPGRADES = {
    # 0.2 "Several versions": `versions` lists what a client may request (loaded versions), not
    # every valid version in the store; three properties describe the loaded versions.
    "versions": lambda meta: ["1"],
    "properties": lambda meta: {
        **meta["properties"],
        "default_version": "1",
        "loaded_versions": {"1": "ready"},
        "labels": {},
    },
}


@pytest.fixture(scope="module")
def old_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, subprocess.Popen[bytes]]:
    work = tmp_path_factory.mktemp("compat")
    shutil.copytree(DATA, work / "compat")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDOCK_")} | {
        "PYTHONPATH": str(ROOT),
        "MODELDOCK_GRPC_PORT": "0",
    }
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--config",
            "config.yaml",
            "--port",
            str(port),
            "--cache-dir",
            str(work / "cache"),
        ],
        cwd=work / "compat",  # the config names its store relative to where the server runs
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"server did not become ready: {(work / 'server.log').read_text()[-3000:]}")
    yield url, proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def _strip(meta: dict[str, Any]) -> dict[str, Any]:
    props = {k: v for k, v in meta["properties"].items() if k not in VOLATILE}
    return {**meta, "properties": props}


def _upgraded(meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, **{key: change(meta) for key, change in UPGRADES.items()}}


def test_the_old_store_and_config_serve_as_they_did(old_setup: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = old_setup
    expected = json.loads((DATA / "expected.json").read_text())
    x = np.load(DATA / "store" / "tiny" / "1" / "examples.npz")["in.input"]
    body = {
        "id": "c1",
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
    }
    infer = requests.post(url + "/v2/models/tiny/infer", json=body, headers=KEY, timeout=30)
    assert infer.status_code == 200
    got, want = infer.json(), expected["infer"]
    assert {k: v for k, v in got.items() if k != "outputs"} == {k: v for k, v in want.items() if k != "outputs"}
    assert np.allclose(got["outputs"][0]["data"], want["outputs"][0]["data"], atol=1e-6)
    meta = requests.get(url + "/v2/models/tiny", headers=KEY, timeout=30).json()
    assert _strip(meta) == _strip(_upgraded(expected["metadata"]))
    statuses = {p: requests.get(url + p, headers=KEY, timeout=30).status_code for p in expected["statuses"]}
    assert statuses == expected["statuses"]
    assert requests.post(url + "/v2/models/tiny/infer", json=body, timeout=30).status_code == expected["noauth"]
    other = requests.post(url + "/v2/models/tiny/versions/2/infer", json=body, headers=KEY, timeout=30)
    # Error messages may say more than they did; the sentence before the detail stays.
    assert other.status_code == 404
    assert other.json()["error"].split(" (")[0] == expected["v2_infer"]["error"].split(" (")[0]
