"""Several versions at once, end to end under load: version windows, labels, statuses, clients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import Load, ServerProcess, infer_body, serve_refused
from tests.server.test_hot_reload import wait_for

ROW = [[0.1, 0.2, 0.3, 0.4]]


def versions_of(server: ServerProcess) -> list[str]:
    return server.get("/v2/models/tiny").json()["versions"]  # type: ignore[no-any-return]


def test_latest_two_serve_on_their_urls_and_the_window_moves_under_load(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    for seed in range(3):
        publish_tiny(store, seed=seed)
    config = {"poll_interval": 0.3, "models": {"tiny": {"versions": "latest:2", "labels": {"stable": 2}}}}
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")
    body = infer_body(ROW)
    assert versions_of(server) == ["2", "3"]
    for v in ("2", "3"):
        r = server.post(f"/v2/models/tiny/versions/{v}/infer", body)
        assert r.status_code == 200 and r.json()["model_version"] == v
        assert server.get(f"/v2/models/tiny/versions/{v}/ready").status_code == 200
        assert server.get(f"/v2/models/tiny/versions/{v}").json()["properties"]["version"] == v
    old = server.post("/v2/models/tiny/versions/1/infer", body)
    assert old.status_code == 404 and "not loaded" in old.json()["error"]
    assert server.get("/v2/models/tiny/versions/1/ready").status_code == 404
    assert server.get("/v2/models/tiny/versions/1").status_code == 404
    assert server.post("/v2/models/tiny/infer", body).json()["model_version"] == "3"  # policy: latest
    assert server.post("/v2/models/tiny/labels/stable/infer", body).json()["model_version"] == "2"
    assert server.post("/v2/models/tiny/labels/nope/infer", body).status_code == 404
    assert "modeldock_version_labels" in server.get("/v2").json()["extensions"]

    # Load on both URLs of the window while a fourth version lands: the window moves to 3 and 4.
    pinned = Load(server.url + "/v2/models/tiny/versions/3/infer", body, threads=2)
    default = Load(server.url + "/v2/models/tiny/infer", body, threads=2)
    try:
        publish_tiny(store, seed=3)
        wait_for(lambda: versions_of(server) == ["3", "4"], "the window moved to 3 and 4", timeout=30)
        mark = default.count()
        wait_for(lambda: "4" in default.versions_since(mark), "unversioned requests reach 4", timeout=30)
    finally:
        pinned.stop()
        default.stop()
    for load in (pinned, default):
        assert {code for code, _ in load.results} == {200} and not load.errors, load.results[-5:]
    assert pinned.versions_since(0) == {"3"}  # version 3 stayed loaded throughout: never reloaded
    assert server.post("/v2/models/tiny/versions/2/infer", body).status_code == 404  # left the window
    # The label still names 2, which left: a clear 404 rather than another version's answer.
    gone = server.post("/v2/models/tiny/labels/stable/infer", body)
    assert gone.status_code == 404 and "not loaded" in gone.json()["error"]
    assert server.metric("modeldock_version_loaded", model="tiny", version="4", worker="0") == 1
    assert server.metric("modeldock_version_loaded", model="tiny", version="2", worker="0") == 0


def test_labels_move_when_the_config_file_changes(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    for seed in range(2):
        publish_tiny(store, seed=seed)
    config = {"poll_interval": 0.3, "models": {"tiny": {"versions": "all", "labels": {"stable": 1, "canary": 2}}}}
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")
    body = infer_body(ROW)

    def label(name: str) -> str:
        return server.post(f"/v2/models/tiny/labels/{name}/infer", body).json()["model_version"]  # type: ignore[no-any-return]

    assert (label("stable"), label("canary")) == ("1", "2")
    load = Load(server.url + "/v2/models/tiny/labels/stable/infer", body, threads=2)
    try:
        cfg_path = server.cfg_path
        assert cfg_path is not None
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["models"]["tiny"]["labels"] = {"stable": 2}
        cfg_path.write_text(yaml.safe_dump(cfg))
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "stable moved to 2", timeout=30)
        # A broken edit changes nothing and says why.
        cfg_path.write_text("models: [oops")
        wait_for(lambda: "cannot be used" in server.log_path.read_text(), "the broken file is refused", timeout=30)
        assert label("stable") == "2"
    finally:
        load.stop()
    assert {code for code, _ in load.results} == {200} and not load.errors
    assert server.post("/v2/models/tiny/labels/canary/infer", body).status_code == 404  # removed


def test_a_label_naming_an_unloaded_version_is_refused_at_start(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"tiny": {"labels": {"stable": 7}}}}))
    out = serve_refused(store.root, cfg, tmp_path)
    assert out.returncode == 2
    assert "label 'stable' names version 7, which is not loaded (loaded: [1])" in out.stderr


def test_tritonclient_asks_for_a_version(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    httpclient = pytest.importorskip("tritonclient.http")
    store = ModelStore(tmp_path / "models")
    for seed in range(2):
        publish_tiny(store, seed=seed)
    server: ServerProcess = start_server(store.root, {"models": {"tiny": {"versions": "all"}}})
    server.wait_until("/v2/health/ready")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = np.asarray(ROW, dtype=np.float32)
    for v in ("1", "2"):
        assert client.is_model_ready("tiny", model_version=v)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("tiny", [inp], model_version=v)
        assert result.get_response()["model_version"] == v
    assert client.get_model_metadata("tiny", model_version="1")["versions"] == ["1", "2"]
