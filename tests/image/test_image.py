"""The built image, run the way k8s/ runs it: read-only root, uid 10001, no capabilities, the store
mounted read-only, the cache on a tmpfs, the ConfigMap's config. Run by `make image-test`, which
builds the image and names it in MODELDOCK_TEST_IMAGE; skipped otherwise."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.ops.harness import ROOT, samples
from tests.server.conftest import free_port

IMAGE = os.environ.get("MODELDOCK_TEST_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="needs a built image: run `make image-test`")
DIGIT = [[[[0.5] * 8] * 8]]  # one 1x8x8 image
BODY = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": DIGIT}]}
DEPLOYMENT = yaml.safe_load((ROOT / "k8s/base/deployment.yaml").read_text())
GRACE_S = int(DEPLOYMENT["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def modeldock(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=600, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Container:
    def __init__(self, store: Path) -> None:
        self.name = f"modeldock-test-{secrets.token_hex(4)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        # Flags mirror k8s/base/deployment.yaml's securityContext, volumes and env.
        podman(
            "run", "-d", "--name", self.name,
            "--read-only", "--read-only-tmpfs=false",  # no writable /tmp either: only the cache
            "--cap-drop=all", "--security-opt", "no-new-privileges", "--user", "10001:10001",
            "--tmpfs", "/var/cache/modeldock:rw,size=1g,U",
            "-v", f"{store}:/models:ro",
            "-v", f"{ROOT / 'k8s/base/config.yaml'}:/etc/modeldock/config.yaml:ro",
            "-e", "MODELDOCK_CONFIG=/etc/modeldock/config.yaml",
            "-p", f"127.0.0.1:{self.port}:8000",
            IMAGE,
        )  # fmt: skip

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def wait_ready(self, timeout: float = 300) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=5).status_code == 200:
                    return time.monotonic() - self.started
            except requests.ConnectionError:
                pass
            state = podman("inspect", self.name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running", f"container {state}:\n{self.logs()}"
            time.sleep(0.25)
        raise AssertionError(f"not ready after {timeout}s:\n{self.logs()}")

    def infer(self) -> requests.Response:
        return requests.post(self.url + "/v2/models/digits/infer", data=json.dumps(BODY), timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    modeldock("demo", "--store", str(folder), "--epochs", "2")  # versions 1 and 2 of `digits`
    return folder


@pytest.fixture
def container(store: Path) -> Iterator[Container]:
    c = Container(store)
    yield c
    podman("rm", "-f", "-t", "0", c.name, check=False)


def test_image_serves_reloads_and_stops_cleanly_locked_down(store: Path, container: Container) -> None:
    ready_s = container.wait_ready()
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    health = podman("healthcheck", "run", container.name, check=False)
    assert health.returncode == 0, f"the image's HEALTHCHECK failed: {health.stdout}{health.stderr}"

    r = container.infer()
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "2"
    assert r.json()["outputs"][0]["shape"] == [1, 10]

    # A version published on the host into the mounted store: served without a restart.
    best = next(store.glob(".checkpoints/**/best.pt"))  # the demo's best checkpoint
    out = modeldock(
        "publish", str(best), "--store", str(store), "--name", "digits",
        "--factory", "model_store.demo:ConvNet", "--input-shape", "1,1,8,8",
    )  # fmt: skip
    assert "digits:3" in out, out
    published = time.monotonic()
    deadline, version = time.monotonic() + 120, ""
    while time.monotonic() < deadline and version != "3":
        r = container.infer()
        assert r.status_code == 200, r.text  # the old version answers until the swap
        version = r.json()["model_version"]
        time.sleep(0.2)
    assert version == "3", f"version 3 never answered:\n{container.logs()}"
    reload_s = time.monotonic() - published

    metrics = requests.get(container.url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    answered = samples(metrics.text, "modeldock_requests_total")
    assert answered[(("code", "200"), ("model", "digits"), ("version", "3"))] >= 1
    assert answered[(("code", "200"), ("model", "digits"), ("version", "2"))] >= 1
    assert set(samples(metrics.text, "modeldock_model_version").values()) == {3.0}

    # `podman stop` sends SIGTERM and waits as long as the pod's grace period, then kills.
    stopping = time.monotonic()
    podman("stop", "-t", str(GRACE_S), container.name, timeout=GRACE_S + 30)
    stop_s = time.monotonic() - stopping
    code = podman("inspect", container.name, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert code == "0", f"exit code {code} after {stop_s:.1f}s:\n{container.logs()}"
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(
        f"\nimage {IMAGE}: {size / 1e6:.0f} MB; start to ready {ready_s:.1f}s; "
        f"publish to new version answering {reload_s:.1f}s; stop to exit 0 in {stop_s:.1f}s"
    )
