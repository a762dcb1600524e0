"""The gRPC process's life: a port already taken stops the server at start-up with a clear
message; SIGTERM drains gRPC calls like REST ones (in-flight answered, new ones UNAVAILABLE); a
gRPC process that dies is started again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from bench.procs import holders
from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import ServerProcess
from tests.server.grpc.conftest import ROWS, expected, start_grpc_server


def rows_input(rows: list[list[float]]) -> tg.InferInput:
    inp = tg.InferInput("input", [len(rows), 4], "FP32")
    inp.set_data_from_numpy(np.asarray(rows, np.float32))
    return inp


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_grpc_port_already_taken_is_a_start_up_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "cwd").mkdir()
        server = ServerProcess(store.root, tmp_path / "cwd", {}, env={"MODELDOCK_GRPC_PORT": str(port)})
        try:
            code = server.proc.wait(timeout=120)
            log = server.log_path.read_text()
            assert code == 2, log
            assert f"gRPC cannot listen on 127.0.0.1:{port}: address already in use" in log
            deadline = time.monotonic() + 20
            while group_alive(server.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not group_alive(server.proc.pid), "processes of the failed server are still running"
        finally:
            server.stop()


def test_sigterm_answers_grpc_calls_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    publish_tiny(store, name="waiting")
    # a lone request waits 3 s for company: it is in flight when SIGTERM comes
    config = {"models": {"tiny": {}, "waiting": {"batch_timeout_s": 3}}}
    server = start_grpc_server(tmp_path, store.root, config)
    outcome: dict[str, Any] = {}
    try:
        server.http.wait_until("/v2/health/ready")
        client = tg.InferenceServerClient(server.grpc_url)
        assert client.infer("tiny", [rows_input(ROWS)]).as_numpy("output").shape == (2, 3)

        def in_flight() -> None:
            try:
                outcome["result"] = tg.InferenceServerClient(server.grpc_url).infer("waiting", [rows_input(ROWS)])
            except InferenceServerException as e:
                outcome["error"] = e

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(1.0)
        os.kill(server.http.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("tiny", [rows_input(ROWS)])
        assert str(refused.value.status()) == "StatusCode.UNAVAILABLE" and "shutting down" in str(
            refused.value.message()
        )
        thread.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        assert np.allclose(outcome["result"].as_numpy("output"), expected(0, ROWS), atol=1e-5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.http.proc.wait(timeout=40)
        log = server.http.log_path.read_text()
        assert server.http.proc.returncode == 0, log
        assert "drained (0 requests still in flight)" in log
    finally:
        server.http.stop()
        server.port_holder.close()


def test_a_grpc_process_that_dies_is_started_again_while_rest_keeps_answering(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0)
    server = start_grpc_server(tmp_path, store.root, {"poll_interval": 0.3})
    try:
        server.http.wait_until("/v2/health/ready")
        server.port_holder.close()
        client = tg.InferenceServerClient(server.grpc_url)
        got = client.infer("tiny", [rows_input(ROWS)]).as_numpy("output")
        assert got is not None and np.allclose(got, expected(0, ROWS), atol=1e-5)
        port = int(server.grpc_url.rsplit(":", 1)[1])
        (grpc_pid,) = holders(server.http.proc.pid, port)
        os.kill(grpc_pid, signal.SIGKILL)  # as the kernel's OOM killer would

        deadline, answered = time.monotonic() + 60, False
        while time.monotonic() < deadline and not answered:
            assert server.http.post("/v2/models/tiny/infer", {"inputs": [rest_input(ROWS)]}).status_code == 200
            with contextlib.suppress(InferenceServerException):
                answered = client.infer("tiny", [rows_input(ROWS)]).as_numpy("output") is not None
            time.sleep(0.2)
        assert answered, f"gRPC never answered again:\n{server.http.log_path.read_text()[-3000:]}"
        assert holders(server.http.proc.pid, port) - {grpc_pid}, "a new gRPC process holds the port"
        assert "exited with code -9; starting it again" in server.http.log_path.read_text()
        client.close()
    finally:
        server.http.stop()


def rest_input(rows: list[list[float]]) -> dict[str, Any]:
    return {"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}
