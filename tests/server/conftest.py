"""A real `modeldock serve` on 127.0.0.1 for integration tests, started and stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
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
                raise AssertionError(
                    f"server exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                if self.get(path).status_code == status:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"{path} not {status} after {timeout}s:\n{self.log_path.read_text()[-3000:]}"
        )

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

    def start(
        store: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
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
        "inputs": [
            {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
        ],
        **extra,
    }
