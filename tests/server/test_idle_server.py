"""An idle server sleeps and stays quiet: its HTTP process wakes about once a second (uvicorn's
own loop woke it ten times a second), and no process runs onnxruntime's telemetry sender."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.servers import roles
from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import ServerProcess, infer_body


def wakeups(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no context switch count for {pid}")


def environment(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_an_idle_http_process_wakes_about_once_a_second(tmp_path: Path, start_server: Any) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, "tiny")
    server: ServerProcess = start_server(store.root, {"api_servers": 1})
    server.wait_until("/v2/health/ready")
    assert server.post("/v2/models/tiny/infer", infer_body([[0.1, 0.2, 0.3, 0.4]])).status_code == 200
    found = roles("modeldock", server.proc.pid, server.port)
    (http,) = [pid for pid, role in found.items() if role == "HTTP server"]
    # The workers are spawned (exec'd): their environment at start shows what the main process set.
    workers = [pid for pid, role in found.items() if role == "inference worker"]
    assert workers and all(b"ORT_DISABLE_TELEMETRY=1" in environment(pid) for pid in workers)
    time.sleep(1.0)  # the answer's own work is over
    before = wakeups(http)
    time.sleep(4.0)
    # uvicorn's loop ticks every 0.1 s (40 wake-ups here); ours once a second, plus stragglers.
    woke = wakeups(http) - before
    assert woke <= 15
