"""A real `modeldock serve` on 127.0.0.1 whose cache dir the test chooses (so servers can share one)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import infer_body, reserve_port, stop_session

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in Prometheus text, keyed by its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


class Server:
    """One server process in its own session (its children are ours to stop), stopped by PID.

    gRPC is off unless `grpc` is set: then it listens on a reserved port of its own (`grpc_url`);
    the default port (8001) would collide between servers of tests running in parallel."""

    def __init__(self, store: Path, cache: Path, log_path: Path, *extra: str, grpc: bool = False) -> None:
        self._reserved = [reserve_port()]
        self.port = int(self._reserved[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        grpc_port = 0
        if grpc:
            self._reserved.append(reserve_port())
            grpc_port = int(self._reserved[1].getsockname()[1])
        self.grpc_url = f"127.0.0.1:{grpc_port}"  # host:port, as tritonclient.grpc takes it
        self.cache = cache
        self.log_path = log_path
        args = [sys.executable, "-m", "server", "serve", "--store", str(store), "--port", str(self.port)]
        args += ["--grpc-port", str(grpc_port), "--cache-dir", str(cache), "--poll-interval", "0.3", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELDOCK_", "PROMETHEUS_"))}
        env["PYTHONPATH"] = str(ROOT)
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            args, cwd=log_path.parent, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def infer(self, model: str, rows: list[list[float]] = ROWS) -> requests.Response:
        return requests.post(f"{self.url}/v2/models/{model}/infer", data=json.dumps(infer_body(rows)), timeout=30)

    def metrics(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        return samples(r.text, name)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if self.get("/v2/health/ready").status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> int:
        code = stop_session(self.proc)
        self.log.close()
        for held in self._reserved:
            held.close()
        return code
