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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process (its own session, so its children are ours to stop)."""

    def __init__(
        self,
        store: Path,
        workdir: Path,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.cache = workdir.parent / f"{workdir.name}-cache"
        args = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--store",
            str(store),
            "--port",
            str(self.port),
            "--cache-dir",
            str(self.cache),
        ]
        if config is not None:
            cfg_path = workdir.parent / f"{workdir.name}-config.yaml"
            cfg_path.write_text(yaml.safe_dump(config))
            args += ["--config", str(cfg_path)]
        self.log_path = workdir.parent / f"{workdir.name}.log"
        self.log = self.log_path.open("w")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDOCK_")}
        full_env |= {"PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            args,
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + path, data=data, timeout=30, **kw)

    def wait_until(self, path: str, status: int = 200, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.get(path).status_code == status:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} not {status} after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=40)
        with contextlib.suppress(ProcessLookupError):  # what is left of our session, nothing else
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


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
    """Closed-loop clients in threads, counting every response; bounded in count and time."""

    def __init__(
        self, url: str, body: dict[str, Any], threads: int = 4, max_requests: int = 50_000, max_s: float = 180
    ) -> None:
        self.url, self.body = url, json.dumps(body).encode()
        self.results: list[tuple[int, str]] = []  # (status, model_version or error text)
        self.errors: list[str] = []  # connection-level failures
        self._stop = threading.Event()
        self._budget = max_requests
        self._deadline = time.monotonic() + max_s
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._budget <= 0:
                    return
                self._budget -= 1
            try:
                r = session.post(self.url, data=self.body, timeout=30)
                detail = r.headers.get("x-model-version", "") if r.status_code == 200 else r.text
                with self._lock:
                    self.results.append((r.status_code, detail))
            except requests.RequestException as e:
                with self._lock:
                    self.errors.append(type(e).__name__)
                time.sleep(0.01)

    def versions_since(self, start: int) -> set[str]:
        with self._lock:
            return {v for code, v in self.results[start:] if code == 200}

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
