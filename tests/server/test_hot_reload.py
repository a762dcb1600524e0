"""Hot reload under load against a real server: swaps, refused versions, rollback, metrics.

Every response is counted: zero failed requests, and no refused version ever answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import Load, ServerProcess, infer_body

ROWS = [[0.1, 0.2, 0.3, 0.4]]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> float:
    """Seconds until `check` holds (polled), or fail naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def clone(store: ModelStore, src: int, dst: int, *, manifest: bool = True) -> Path:
    """Copy a version folder under another number (as a user's cp would), fixing its manifest."""
    folder = store.root / "tiny" / str(dst)
    shutil.copytree(
        store.path("tiny", src), folder, ignore=None if manifest else shutil.ignore_patterns("manifest.json")
    )
    if manifest:
        m = json.loads((folder / "manifest.json").read_text())
        m["version"] = dst
        (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def metadata(server: ServerProcess) -> dict:
    return server.get("/v2/models/tiny").json()


def test_versions_come_and_go_under_load_without_one_failed_request(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0)
    publish_tiny(store, name="other", seed=42)
    server: ServerProcess = start_server(store.root, {"poll_interval": 0.5, "models": {"tiny": {"max_batch_size": 8}}})
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=4)
    try:
        wait_for(lambda: load.versions_since(0) == {"1"}, "v1 answers")

        # v1 -> v2: a valid version lands and answers.
        publish_tiny(store, seed=1)
        mark = load.count()
        landed = wait_for(lambda: "2" in load.versions_since(mark), "v2 answers", timeout=10)

        # 3: truncated (pending forever); 4: checksum mismatch; 5: another model's artifacts.
        onnx = clone(store, 2, 3) / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:100])
        ts = clone(store, 2, 4) / "model.torchscript.pt"
        data = bytearray(ts.read_bytes())
        data[-50] ^= 0xFF
        ts.write_bytes(bytes(data))
        # Made aside and moved in whole: a server that saw it half-edited would judge that state.
        five = tmp_path / "five"
        shutil.copytree(store.path("tiny", 2), five)
        m = json.loads((five / "manifest.json").read_text())
        other = store.manifest("other", 1)
        for a in other["artifacts"]:
            shutil.copy(store.path("other", 1) / a["path"], five / a["path"])
        m["artifacts"], m["version"] = other["artifacts"], 5
        (five / "manifest.json").write_text(json.dumps(m))
        five.rename(store.root / "tiny" / "5")
        # 6: half copied, then a garbage manifest.
        six = clone(store, 2, 6, manifest=False)
        (six / "model.onnx").unlink()
        wait_for(lambda: {"4", "5"} <= set(metadata(server)["properties"]["rejected"]), "4 and 5 rejected")
        (six / "manifest.json").write_text("{garbage")
        rejected = metadata(server)["properties"]["rejected"]
        assert "sha256 mismatch" in rejected["4"]
        assert "outputs differ from the golden outputs" in rejected["5"]

        # 7: valid, lands after all that.
        publish_tiny(store, seed=2)
        mark = load.count()
        wait_for(lambda: "7" in load.versions_since(mark), "v7 answers")

        # Deleting the version in service rolls back to the highest remaining valid one.
        shutil.rmtree(store.path("tiny", 7))
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "rollback to v2")
        mark = load.count()
        wait_for(lambda: load.count() > mark + 20, "load after rollback")
        assert load.versions_since(mark) == {"2"}

        # With no valid version left, the in-memory one keeps serving, with a warning.
        for v in (1, 2):
            shutil.rmtree(store.path("tiny", v))
        wait_for(lambda: "keeping it in memory" in metadata(server)["properties"].get("reason", ""), "kept")
        mark = load.count()
        wait_for(lambda: load.count() > mark + 20, "still serving")
        assert load.versions_since(mark) == {"2"}
    finally:
        load.stop()

    statuses = {code for code, _ in load.results}
    assert statuses == {200}, [r for r in load.results if r[0] != 200][:5]
    assert not load.errors
    assert load.versions_since(0) == {"1", "2", "7"}  # no refused version ever answered
    assert len(load.results) > 200
    print(f"v2 answered {landed:.2f}s after publish returned; {len(load.results)} requests, all 200")

    text = server.get("/metrics").text
    assert 'modeldock_model_reloads_total{model="tiny",result="rejected"}' in text
    assert 'modeldock_model_version{model="tiny",worker="0"} 2.0' in text
    assert 'modeldock_requests_total{code="200",model="tiny",version="7"}' in text
    for name in (
        "request_duration_seconds",
        "queue_wait_seconds",
        "batch_size",
        "inference_seconds",
        "version_load_seconds",
    ):
        assert f"modeldock_{name}_count" in text, name


def answering_version(server: ServerProcess, times: int = 10) -> set[str]:
    """The versions that answer `times` plain infer requests (no version in the path)."""
    found = set()
    for _ in range(times):
        r = server.post("/v2/models/tiny/infer", infer_body(ROWS))
        assert r.status_code == 200, r.text
        found.add(r.json()["model_version"])
    return found


def seen_by_the_watcher(server: ServerProcess, store: ModelStore, version: int) -> None:
    """Publish a corrupt copy as `version` and wait until it is rejected: the poll that rejects
    it listed every version published before it, and applied the policy to them."""
    onnx = clone(store, 1, version) / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-20] ^= 0xFF
    onnx.write_bytes(bytes(data))
    wait_for(lambda: str(version) in metadata(server)["properties"]["rejected"], f"v{version} rejected")


def test_policy_best_serves_the_best_version_not_the_latest(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0, metrics={"val_acc": 0.9})
    server: ServerProcess = start_server(
        store.root, {"poll_interval": 0.5, "models": {"tiny": {"policy": "best:val_acc"}}}
    )
    server.wait_until("/v2/health/ready")
    assert answering_version(server) == {"1"}

    # 2 is the latest but worse: once the watcher has seen it, 1 keeps answering, 2 never does.
    publish_tiny(store, seed=1, metrics={"val_acc": 0.8})
    seen_by_the_watcher(server, store, 3)
    assert answering_version(server) == {"1"}
    assert server.post("/v2/models/tiny/versions/2/infer", infer_body(ROWS)).status_code == 404

    # 4 is better: it answers.
    publish_tiny(store, seed=2, metrics={"val_acc": 0.95})
    wait_for(lambda: answering_version(server, 1) == {"4"}, "v4 (best) answers")
    # 5 is the latest again and worse than 4: 4 keeps answering.
    publish_tiny(store, seed=3, metrics={"val_acc": 0.85})
    seen_by_the_watcher(server, store, 6)
    assert answering_version(server) == {"4"}


class ConnectionLoad:
    """Closed-loop clients, one connection per request, telling apart what happened to each:
    answered (an HTTP status), refused (connect failed: no listener), or dropped (connected,
    i.e. accepted by the kernel for the server, and then reset or closed without an answer)."""

    def __init__(self, port: int, path: str, body: dict[str, Any], threads: int = 8, max_s: float = 120) -> None:
        data = json.dumps(body).encode()
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode() + data
        self.port = port
        self.answered: list[tuple[int, str, bool]] = []  # (status, body, connected before the signal)
        self.refused = 0
        self.dropped: list[tuple[str, bool]] = []  # (what happened, connected before the signal)
        self.signalled = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        for _ in range(100_000):  # bounded in count and, below, in time
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            self._one()

    def _one(self) -> None:
        try:
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        except ConnectionRefusedError:
            with self._lock:
                self.refused += 1
            time.sleep(0.01)
            return
        before = not self.signalled.is_set()
        data = b""
        try:
            with conn:
                conn.sendall(self.request)
                while chunk := conn.recv(65536):
                    data += chunk
        except OSError as e:  # reset or timed out after the connection was accepted
            with self._lock:
                self.dropped.append((f"{type(e).__name__} after {len(data)} bytes", before))
            return
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            with self._lock:
                self.dropped.append((f"closed after {len(data)} bytes", before))
            return
        with self._lock:
            self.answered.append((int(head.split(b" ", 2)[1]), body.decode(errors="replace"), before))

    def answered_ok(self) -> int:
        with self._lock:
            return sum(1 for code, _, _ in self.answered if code == 200)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def tally(self) -> str:
        codes: dict[int, int] = {}
        for code, _, _ in self.answered:
            codes[code] = codes.get(code, 0) + 1
        accepted = len(self.answered) + len(self.dropped)
        before = sum(1 for _, b in self.dropped if b)
        return (
            f"{accepted} accepted: {len(self.answered)} answered {codes}, {len(self.dropped)} dropped "
            f"({before} connected before the signal; {sorted({w for w, _ in self.dropped})}); "
            f"{self.refused} refused"
        )


@pytest.mark.parametrize("target", ["pid", "group"])
def test_sigterm_drains_under_load_and_exits_zero(tmp_path: Path, start_server, target: str) -> None:  # type: ignore[no-untyped-def]
    """Every connection the server accepted gets an HTTP answer: 200, or 503 "shutting down" once
    the drain began. Refused connections (the listener is closed) are fine; a reset is not."""
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    server: ServerProcess = start_server(store.root)
    server.wait_until("/v2/health/ready")
    load = ConnectionLoad(server.port, "/v2/models/tiny/infer", infer_body(ROWS))
    try:
        wait_for(lambda: load.answered_ok() > 50, "load running", timeout=60)
        load.signalled.set()
        if target == "pid":
            os.kill(server.proc.pid, signal.SIGTERM)
        else:
            os.killpg(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(timeout=60)
        wait_for(lambda: load.refused > 0, "connections refused once the server is gone")
    finally:
        load.stop()
    print(f"SIGTERM to the {target}: {load.tally()}")
    assert code == 0, server.log_path.read_text()[-3000:]
    assert not load.dropped, load.tally()
    assert {c for c, _, _ in load.answered} <= {200, 503}, load.tally()
    assert all("shutting down" in b for c, b, _ in load.answered if c == 503), load.tally()
    assert "drained (0 requests still in flight)" in server.log_path.read_text()
    wait_for(lambda: _group_gone(server.proc.pid), "nothing of the server's process group is left", timeout=10)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
