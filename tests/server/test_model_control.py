"""Models that come and go while serving, and the admin API over them, under load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import Load, ServerProcess, infer_body, reserve_port
from tests.server.test_hot_reload import wait_for

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[0.1, 0.2, 0.3, 0.4]]
ADMIN = {"x-admin-key": "admin-secret"}


def answers(server: ServerProcess, model: str) -> int:
    return server.post(f"/v2/models/{model}/infer", infer_body(ROWS)).status_code


def test_a_model_published_while_serving_is_served_and_one_removed_unloads(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, "tiny")
    server: ServerProcess = start_server(store.root, {"poll_interval": 0.3})
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=2)
    try:
        assert answers(server, "other") == 404
        publish_tiny(store, "other", seed=3)
        wait_for(lambda: answers(server, "other") == 200, "the new model answers, no restart", timeout=60)
        assert server.get("/v2/models/other").json()["versions"] == ["1"]
        # Readiness stays about the models the server started with.
        assert server.get("/v2/health/ready").json()["waiting_for"] == []

        # The store's root goes away (an unmounted volume) and comes back: nothing unloads.
        moved = tmp_path / "models-away"
        store.root.rename(moved)
        mark = load.count()
        wait_for(lambda: load.count() > mark + 30, "still serving without a store root", timeout=30)
        assert answers(server, "other") == 200
        moved.rename(store.root)

        # The new model's folder is removed while the store lists fine: it unloads, 404 after.
        shutil.rmtree(store.root / "other")
        wait_for(lambda: answers(server, "other") == 404, "the removed model is 404", timeout=30)
        assert "its folder left the store" in server.post("/v2/models/other/infer", infer_body(ROWS)).text
        mark = load.count()
        wait_for(lambda: load.count() > mark + 30, "tiny still serving", timeout=30)

        # A whole model folder renamed into the store (how a copy lands atomically) is served too.
        side = ModelStore(tmp_path / "side")
        publish_tiny(side, "third", seed=4)
        (side.root / "third").rename(store.root / "third")
        wait_for(lambda: answers(server, "third") == 200, "a folder landed whole answers", timeout=60)
    finally:
        load.stop()
    assert {code for code, _ in load.results} == {200} and not load.errors


def test_the_admin_api_and_cli_load_unload_and_pin(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    for seed in range(3):
        publish_tiny(store, "tiny", seed=seed)
    config = {"poll_interval": 0.3, "api_key": "infer-key", "admin_api_key": "admin-secret"}
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")
    key = {"x-api-key": "infer-key"}

    def version(path: str = "/v2/models/tiny/infer") -> str:
        """The version that answers, or "" while none does (e.g. loading again)."""
        r = server.post(path, infer_body(ROWS), headers=key)
        return r.json()["model_version"] if r.status_code == 200 else ""  # type: ignore[no-any-return]

    # Refused: no key, the inference key, a wrong key; a path or a URL instead of a name.
    assert server.post("/v2/repository/models/tiny/unload").status_code == 401
    assert server.post("/v2/repository/models/tiny/unload", headers=key).status_code == 401
    assert server.post("/v2/repository/models/tiny/unload", headers={"x-admin-key": "no"}).status_code == 401
    for bad in ("..%2F..%2Fetc", "http:%2F%2Fevil.example%2Fm.pt"):
        r = server.post(f"/v2/repository/models/{bad}/load", headers=ADMIN)
        assert r.status_code in (400, 404), r.text
    r = server.post("/v2/repository/models/nothere/load", headers=ADMIN)
    assert r.status_code == 404 and "not in the store" in r.json()["error"]

    index = server.get("/v2/repository/index", headers=ADMIN).json()
    assert [(m["name"], m["state"], m["version"]) for m in index] == [("tiny", "READY", "3")]
    # Per version: load 1 beside 3, pin 1, then unpin.
    assert server.post("/v2/repository/models/tiny/versions/1/load", headers=ADMIN).status_code == 200
    wait_for(
        lambda: server.post("/v2/models/tiny/versions/1/infer", infer_body(ROWS), headers=key).status_code == 200,
        "v1 loaded",
    )
    r = server.post("/v2/repository/models/tiny/versions/3/unload", headers=ADMIN)
    assert r.status_code == 409 and "pin another one first" in r.json()["error"]
    assert server.post("/v2/repository/models/tiny/versions/1/pin", headers=ADMIN).status_code == 200
    wait_for(lambda: version() == "1", "pinned to 1")
    assert server.post("/v2/repository/models/tiny/unpin", headers=ADMIN).status_code == 200
    wait_for(lambda: version() == "3", "back to the policy's 3")

    cli = [sys.executable, "-m", "server"]
    common = ["--url", server.url, "--admin-key", "admin-secret"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, *common], capture_output=True, text=True, cwd=ROOT, timeout=60)

    out = run("unload", "tiny")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: server.post("/v2/models/tiny/infer", infer_body(ROWS), headers=key).status_code == 404, "unloaded")
    assert '"state": "UNAVAILABLE"' in run("models").stdout
    assert run("load", "tiny").returncode == 0
    wait_for(lambda: version() == "3", "loaded again")
    out = run("pin", "tiny", "9")
    assert out.returncode == 1 and "refused (404)" in out.stderr and "not a valid version" in out.stderr
    gone = subprocess.run(
        [*cli, "models", "--url", "http://127.0.0.1:9", "--admin-key", "x"], capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


def test_the_repository_extension_over_grpc_needs_the_admin_key(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    store = ModelStore(tmp_path / "models")
    publish_tiny(store, "tiny")
    holder = reserve_port()
    port = holder.getsockname()[1]
    config = {"poll_interval": 0.3, "admin_api_key": "admin-secret"}
    server: ServerProcess = start_server(store.root, config, {"MODELDOCK_GRPC_PORT": str(port)})
    server.wait_until("/v2/health/ready")
    holder.close()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_model_repository_index()
    index = client.get_model_repository_index(headers=ADMIN, as_json=True)
    assert [(m["name"], m["state"]) for m in index["models"]] == [("tiny", "READY")]
    client.unload_model("tiny", headers=ADMIN)
    wait_for(lambda: answers(server, "tiny") == 404, "unloaded over gRPC")
    with pytest.raises(InferenceServerException, match="not in the store"):
        client.load_model("nothere", headers=ADMIN)
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):  # unloaded: gRPC refuses it too
        client.infer("tiny", [grpc_input(grpcclient)])
    client.load_model("tiny", headers=ADMIN)
    wait_for(lambda: answers(server, "tiny") == 200, "loaded again over gRPC", timeout=60)

    # A model published while serving (the pool's) answers over gRPC as over REST.
    publish_tiny(store, "other", seed=3)
    wait_for(lambda: answers(server, "other") == 200, "the new model answers over REST", timeout=60)
    got = client.infer("other", [grpc_input(grpcclient)]).as_numpy("output")
    rest = server.post("/v2/models/other/infer", infer_body(ROWS)).json()["outputs"][0]["data"]
    assert got is not None and got.ravel().tolist() == pytest.approx(rest)
    client.close()


def grpc_input(grpcclient: Any) -> Any:
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    return tensor
