"""Hot reload under load against a real server: swaps, refused versions, rollback, metrics.

Every response is counted: zero failed requests, and no refused version ever answers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

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
        five = clone(store, 2, 5)
        m = json.loads((five / "manifest.json").read_text())
        other = store.manifest("other", 1)
        for a in other["artifacts"]:
            shutil.copy(store.path("other", 1) / a["path"], five / a["path"])
        m["artifacts"] = other["artifacts"]
        (five / "manifest.json").write_text(json.dumps(m))
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


def test_a_better_version_by_metric_is_picked_up(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0, metrics={"val_acc": 0.9})
    server: ServerProcess = start_server(
        store.root, {"poll_interval": 0.5, "models": {"tiny": {"policy": "best:val_acc"}}}
    )
    server.wait_until("/v2/health/ready")
    publish_tiny(store, seed=1, metrics={"val_acc": 0.8})  # worse: stays on 1
    publish_tiny(store, seed=2, metrics={"val_acc": 0.95})  # better: serves 3
    wait_for(lambda: metadata(server)["properties"].get("version") == "3", "best version served")
    assert metadata(server)["versions"] == ["1", "2", "3"]


@pytest.mark.parametrize("target", ["pid", "group"])
def test_sigterm_drains_under_load_and_exits_zero(tmp_path: Path, start_server, target: str) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    server: ServerProcess = start_server(store.root)
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=4)
    wait_for(lambda: load.count() > 50, "load running")
    started = time.monotonic()
    if target == "pid":
        os.kill(server.proc.pid, signal.SIGTERM)
    else:
        os.killpg(server.proc.pid, signal.SIGTERM)
    code = server.proc.wait(timeout=30)
    took = time.monotonic() - started
    load.stop()
    assert code == 0 and took < 25
    # Accepted requests were answered; new ones got 503 until the port closed.
    assert {c for c, _ in load.results} <= {200, 503}, [r for r in load.results if r[0] not in (200, 503)][:3]
    assert set(load.errors) <= {"ConnectionError"}
    with pytest.raises(ProcessLookupError):  # nothing of the server's process group is left
        wait_for(lambda: _group_gone(server.proc.pid), "process group gone", timeout=5)
        os.killpg(server.proc.pid, 0)


def _group_gone(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
