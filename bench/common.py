"""What every benchmark script shares: request bodies, free ports, server processes we started
(ready only when the process we started is the one listening), the load client, answer checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.procs import port_owner, tree_cpu

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class BenchError(Exception):
    """The benchmark cannot go on; the message says which server and why."""


def sample(row_shape: tuple[int, ...], rows: int = 1) -> np.ndarray[Any, Any]:
    """The input every request of a run carries (fixed seed: answers can be checked)."""
    return np.random.default_rng(0).random((rows, *row_shape), dtype=np.float32)


def json_body(row_shape: tuple[int, ...], rows: int = 1) -> bytes:
    spec = {
        "name": "input",
        "shape": [rows, *row_shape],
        "datatype": "FP32",
        "data": sample(row_shape, rows).ravel().tolist(),
    }
    return json.dumps({"inputs": [spec]}).encode()


def binary_body(row_shape: tuple[int, ...], rows: int = 1) -> tuple[bytes, list[str]]:
    raw = sample(row_shape, rows).tobytes()
    spec = {
        "name": "input",
        "shape": [rows, *row_shape],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"inputs": [spec], "parameters": {"binary_data_output": True}}).encode()
    return head + raw, [f"Inference-Header-Content-Length:{len(head)}", "Content-Type:application/octet-stream"]


def free_port() -> int:
    """A port nobody listens on now (the OS picks it); the server we start binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server process group we started, logging to a file; stopped by its PID.

    Ready means: the process is alive, it (or a child) holds the listening socket of its port,
    and /v2/health/ready answers 200. A server of someone else on the same port never counts."""

    def __init__(
        self,
        kind: str,
        cmd: list[str],
        port: int,
        work: Path,
        env: Mapping[str, str] | None = None,
        ready_s: float = 180.0,
    ) -> None:
        self.kind, self.port = kind, port
        self.log = work / f"{kind}-{port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=dict(env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT)}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(ready_s)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.kind} (pid {self.pid}) exited with status {self.proc.returncode}; "
                f"last lines of its log {self.log}:\n{self.log_tail()}"
            )

    ready_path = "/v2/health/ready"

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        owner = "none"
        while time.monotonic() < deadline:
            self.check_alive()
            owner = port_owner(self.pid, self.port)
            if owner == "ours":
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.2)
        held = f"; port {self.port} is held by another process" if owner == "other" else ""
        raise BenchError(
            f"{self.kind} (pid {self.pid}) not ready after {seconds:.0f} s{held}; "
            f"last lines of its log {self.log}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=40)
        with contextlib.suppress(ProcessLookupError):  # anything left of the group we started
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def run_client(
    port: int,
    model: str,
    body: bytes,
    headers: list[str],
    concurrency: int,
    requests: int,
    max_s: float,
    work: Path,
    versions: bool = False,
) -> dict[str, Any]:
    """One `bench.client` run in its own process (so that its CPU is not the server's)."""
    body_file = work / "body.bin"
    body_file.write_bytes(body)
    cmd = [PY, "-m", "bench.client", f"http://127.0.0.1:{port}/v2/models/{model}/infer", str(body_file)]
    cmd += ["--concurrency", str(concurrency), "--requests", str(requests), "--max-seconds", str(max_s)]
    cmd += [a for h in headers for a in ("--header", h)] + (["--versions"] if versions else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise BenchError(f"load client failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def load(
    server: ServerProcess,
    model: str,
    body: bytes,
    headers: list[str],
    c: int,
    requests: int,
    max_s: float,
    work: Path,
    roles: Callable[[int], dict[int, str]] | None = None,
) -> dict[str, Any]:
    """A client run plus the server's CPU per request (all its processes, and by role)."""
    before = tree_cpu(server.pid)
    result = run_client(server.port, model, body, headers, c, requests, max_s, work)
    after = tree_cpu(server.pid)
    server.check_alive()
    n = max(1, result["requests"])
    spent = {p: after[p] - before.get(p, 0.0) for p in after}
    result["server_cpu_ms_per_req"] = 1000 * sum(spent.values()) / n
    result["client_cpu_ms_per_req"] = 1000 * result["client_cpu_s"] / n
    if roles is not None:
        by_role: dict[str, float] = {}
        for pid, role in roles(server.pid).items():
            by_role[role] = by_role.get(role, 0.0) + 1000 * spent.get(pid, 0.0) / n
        result["cpu_ms_per_req_by_role"] = {k: round(v, 4) for k, v in by_role.items()}
    return result


def infer_once(port: int, model: str, body: bytes, headers: list[str]) -> tuple[str, dict[str, np.ndarray[Any, Any]]]:
    """POST one request; the `model_version` it reports and its outputs (JSON or binary)."""
    hdrs = {"Content-Type": "application/json"} | dict(h.split(":", 1) for h in headers)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body, hdrs, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        raw, head_len = r.read(), r.headers.get("Inference-Header-Content-Length")
    head, blob = (raw, b"") if head_len is None else (raw[: int(head_len)], raw[int(head_len) :])
    doc = json.loads(head)
    outputs, offset = {}, 0
    for o in doc["outputs"]:
        dtype = DTYPES[o["datatype"]]
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(blob[offset : offset + size], dtype=dtype)
            offset += size
        else:
            arr = np.asarray(o["data"], dtype=dtype)
        outputs[o["name"]] = arr.reshape(o["shape"])
    return str(doc.get("model_version", "")), outputs


def check_answers(
    server: ServerProcess,
    model: str,
    bodies: Mapping[str, tuple[bytes, list[str]]],
    expected: Mapping[str, np.ndarray[Any, Any]],
) -> str:
    """Every body once: the server must answer what in-process onnxruntime computes."""
    version = ""
    for fmt, (body, headers) in bodies.items():
        try:
            version, got = infer_once(server.port, model, body, headers)
        except urllib.error.HTTPError as e:
            raise BenchError(f"{server.kind}: {model} {fmt} request answered {e.code}: {e.read()[:500]!r}") from None
        except OSError as e:
            raise BenchError(f"{server.kind}: {model} {fmt} request failed: {e}\n{server.log_tail()}") from None
        for name, want in expected.items():
            if name not in got or got[name].shape != want.shape or not np.allclose(got[name], want, atol=1e-4):
                raise BenchError(f"{server.kind}: wrong answer for {model} ({fmt} body), output {name!r}")
    return version
