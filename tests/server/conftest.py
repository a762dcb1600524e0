"""A real `modeldock serve` on 127.0.0.1 for integration tests, started and stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
DIGIT_7 = ROOT / "docs" / "digit-7.png"  # the image the README's curl sends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reserve_port() -> socket.socket:
    """A loopback port held until the server that gets it stops: bound with SO_REUSEADDR and never
    listening, so the server (uvicorn binds with SO_REUSEADDR too) can bind and listen on it, while
    no other bind to port 0 and no outgoing connection can take it in the seconds before it does."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


ADDRESS_IN_USE = "[Errno 98] Address already in use"  # the HTTP bind (uvicorn's message or our OSError)
START_ATTEMPTS = 3


def stop_session(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the server drains), then SIGKILL to what is left of the session we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=40)
    with contextlib.suppress(ProcessLookupError):  # what is left of our session, nothing else
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return proc.returncode


def without_rollout(config: dict[str, Any]) -> dict[str, Any]:
    """Most tests swap between unrelated models (other seeds) to see which version answers; the
    safe default (a rollout that rejects a version disagreeing with the serving one) would keep
    them from ever swapping. They say so: `rollout: off`, unless the test configures a rollout."""
    if "rollout" in str(config):
        return config
    defaults = {**config.get("defaults", {}), "rollout": {"mode": "off"}}
    return {**config, "defaults": defaults}


class ServerProcess:
    """One server process (its own session, so its children are ours to stop).

    The port is reserved until `stop()`; should it be taken anyway (a process outside this test
    run bound it), `wait_until` starts the server again on another port, up to START_ATTEMPTS times.
    """

    def __init__(
        self,
        store: Path,
        workdir: Path,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store, self.workdir, self.env = store, workdir, env or {}
        self.host = self.env.get("MODELDOCK_HOST", "127.0.0.1")
        self.cache = workdir.parent / f"{workdir.name}-cache"
        self.cfg_path: Path | None = workdir.parent / f"{workdir.name}-config.yaml"
        self.cfg_path.write_text(yaml.safe_dump(without_rollout(config or {})))
        self.log_path = workdir.parent / f"{workdir.name}.log"
        self.log = self.log_path.open("w")
        self.attempts = 0
        self._launch()

    def _launch(self) -> None:
        self.attempts += 1
        self._reservation = reserve_port()
        self.port = int(self._reservation.getsockname()[1])
        self.url = f"http://{self.host}:{self.port}"
        args = [sys.executable, "-m", "server", "serve", "--store", str(self.store), "--port", str(self.port)]
        args += ["--cache-dir", str(self.cache)]
        if self.cfg_path is not None:
            args += ["--config", str(self.cfg_path)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDOCK_")}
        full_env |= {"PYTHONPATH": str(ROOT), "MODELDOCK_GRPC_PORT": "0", **self.env}
        self.log.write(f"--- test harness: start {self.attempts} on port {self.port}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            args,
            cwd=self.workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def _lost_its_port(self) -> bool:
        """The server exited because its port was taken: start it again on another one."""
        last_start = self.log_path.read_text().rsplit("--- test harness: start", 1)[-1]
        if ADDRESS_IN_USE not in last_start or self.attempts >= START_ATTEMPTS:
            return False
        self._reservation.close()
        self._launch()
        return True

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + path, data=data, timeout=30, **kw)

    def wait_until(self, path: str, status: int = 200, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self._lost_its_port():
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + path, timeout=5).status_code == status:
                    return
            except requests.RequestException:  # not listening yet (or, until it exits, not ours)
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} not {status} after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the server has not recorded it yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stop(self) -> int:
        code = stop_session(self.proc)
        self.log.close()
        self._reservation.close()
        return code


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits demo (two versions with labels.json), made once per session."""
    from model_store.demo import run_demo

    root = tmp_path_factory.mktemp("digits") / "models"
    assert run_demo(root) == [1, 2]
    return root


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(store: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        workdir = tmp_path / f"cwd{len(started)}"
        workdir.mkdir()
        server = ServerProcess(store, workdir, config, env)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def infer_body(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}],
        **extra,
    }


class Load:
    """Closed-loop clients in threads, counting every response; bounded in count and time.

    Each request has an id (its order of sending); `outstanding` holds the ids sent and not yet
    answered, `outcomes` the status (or error name) of each finished one.
    """

    def __init__(
        self, url: str, body: dict[str, Any], threads: int = 4, max_requests: int = 50_000, max_s: float = 180
    ) -> None:
        self.url, self.body = url, json.dumps(body).encode()
        self.results: list[tuple[int, str]] = []  # (status, model_version or error text)
        self.errors: list[str] = []  # connection-level failures
        self.outstanding: set[int] = set()
        self.outcomes: dict[int, int | str] = {}
        self.lock = threading.Lock()  # held by a test, it freezes what the clients record
        self._stop = threading.Event()
        self._sent = 0
        self._budget = max_requests
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self.lock:
                if self._budget <= 0:
                    return
                self._budget -= 1
                rid, self._sent = self._sent, self._sent + 1
                self.outstanding.add(rid)
            try:
                r = session.post(self.url, data=self.body, timeout=30)
                detail = r.headers.get("x-model-version", "") if r.status_code == 200 else r.text
                with self.lock:
                    self.results.append((r.status_code, detail))
                    self.outstanding.discard(rid)
                    self.outcomes[rid] = r.status_code
            except requests.RequestException as e:
                with self.lock:
                    self.errors.append(type(e).__name__)
                    self.outstanding.discard(rid)
                    self.outcomes[rid] = type(e).__name__
                time.sleep(0.01)

    def versions_since(self, start: int) -> set[str]:
        with self.lock:
            return {v for code, v in self.results[start:] if code == 200}

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


SERVE = [sys.executable, "-m", "server", "serve"]


def serve_refused(store: Path, config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`modeldock serve` with a config that must stop the start: its exit code and stderr."""
    return subprocess.run(
        [*SERVE, "--store", str(store), "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
