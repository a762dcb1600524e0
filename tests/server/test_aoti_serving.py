"""aoti (and exported) artifacts served over REST: dynamic batches, the aoti fallback, bad packages."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from model_store import ModelStore
from tests.fakes import TinyMLP
from tests.server.conftest import ServerProcess, infer_body

CONFIG = {
    "poll_interval": 0.5,
    "defaults": {"trust_native_code": True},
    "models": {"fast": {"max_batch_size": 32}, "moved": {"max_batch_size": 32}},
}


def land(model_dir: Path, source: Path, version: int, change: object = None) -> Path:
    """Copy a version under another name/number, let `change(folder)` alter it, reseal its
    manifest (sizes, sha256) and rename it into place at once, as a publisher would."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    m = json.loads((staging / "manifest.json").read_text())
    m["name"], m["version"] = model_dir.name, version
    if change is not None:
        change(staging, m)  # type: ignore[operator]
    for a in m["artifacts"]:
        p = staging / a["path"]
        a["size"], a["sha256"] = p.stat().st_size, ModelStore(model_dir.parent).hashes.sha256(p)
    (staging / "manifest.json").write_text(json.dumps(m))
    os.rename(staging, model_dir / str(version))
    return model_dir / str(version)


def built_elsewhere(folder: Path, m: dict) -> None:
    next(a for a in m["artifacts"] if a["format"] == "aoti")["environment"]["torch"] = "2.99.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, aoti_version: Path) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("export-serving")
    for name in ("fast", "moved"):
        (base / "models" / name).mkdir(parents=True)
    land(base / "models" / "fast", aoti_version, 1)
    land(base / "models" / "moved", aoti_version, 1, built_elsewhere)
    (base / "cwd").mkdir()
    srv = ServerProcess(base / "models", base / "cwd", CONFIG)
    try:
        for name in ("fast", "moved"):
            srv.wait_until(f"/v2/models/{name}/ready")
        yield srv
    finally:
        srv.stop()


def infer(server: ServerProcess, model: str, rows: int) -> np.ndarray:
    x = torch.randn(rows, 4, generator=torch.Generator().manual_seed(rows))
    r = server.post(f"/v2/models/{model}/infer", infer_body(x.tolist()))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [rows, 3] and r.json()["model_version"] == "1"
    with torch.no_grad():
        np.testing.assert_allclose(np.array(out["data"]).reshape(rows, 3), TinyMLP(seed=0).eval()(x), atol=1e-4)
    return np.array(out["data"])


@pytest.mark.parametrize("rows", [1, 7, 32])
@pytest.mark.parametrize("model", ["fast", "moved"])
def test_dynamic_batches_give_the_eager_outputs(server: ServerProcess, model: str, rows: int) -> None:
    infer(server, model, rows)


def test_aoti_serves_where_it_was_built_and_falls_back_where_it_cannot(server: ServerProcess) -> None:
    fast = server.get("/v2/models/fast").json()
    assert fast["platform"] == "pytorch_aoti" and fast["properties"]["choice"].startswith("aoti on cpu")
    moved = server.get("/v2/models/moved").json()
    assert moved["platform"] == "pytorch_exported" and moved["properties"]["choice"].startswith("exported on cpu")
    assert "aoti: cannot run here: built for torch '2.99.0', this machine has" in moved["properties"]["choice"]
    assert "moved:1 skipping aoti: cannot run here: built for torch" in server.log_path.read_text()


def test_bad_packages_are_refused_and_the_serving_version_keeps_serving(server: ServerProcess) -> None:
    def truncate_aoti(folder: Path, m: dict) -> None:
        p = folder / "model.aoti.pt2"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def not_a_program(folder: Path, m: dict) -> None:
        built_elsewhere(folder, m)
        torch.save(TinyMLP().state_dict(), folder / "model.exported.pt2")

    store = server.store
    land(store / "fast", store / "fast" / "1", 2, truncate_aoti)
    land(store / "moved", store / "moved" / "1", 2, not_a_program)
    for model, reason in (
        ("fast", "model.aoti.pt2: not a loadable AOTInductor package"),
        ("moved", "model.exported.pt2: not a torch.export program"),
    ):
        deadline = 60.0
        while "2" not in server.get(f"/v2/models/{model}").json()["properties"].get("rejected", {}) and deadline > 0:
            deadline -= 0.25
            requests.get(server.url + "/v2/health/live", timeout=5)
            __import__("time").sleep(0.25)
        rejected = server.get(f"/v2/models/{model}").json()["properties"]["rejected"]
        assert reason in rejected["2"], rejected
        infer(server, model, 7)  # still version 1
