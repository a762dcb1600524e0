"""A version published as a torch.export program, served for real over REST and gRPC with dynamic
batches; a program that would unpickle on load is rejected while the serving version answers."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as tg

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import infer_body
from tests.server.grpc.conftest import expected, serving_grpc
from tests.server.test_hot_reload import metadata, wait_for


def _pickled_weights(folder: Path) -> None:
    """Mark a weight `use_pickle` and fix the manifest's checksum: only the .pt2 check can refuse it."""
    path = folder / "model.exported.pt2"
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    name = next(n for n in members if n.endswith("model_weights_config.json"))
    config = json.loads(members[name])
    config["config"][next(iter(config["config"]))]["use_pickle"] = True
    members[name] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as zout:
        for n, data in members.items():
            zout.writestr(n, data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["format"] == "exported":
            art["sha256"], art["size"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_exported_versions_serve_dynamic_batches_and_unsafe_ones_are_rejected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0, formats=("exported",))
    with serving_grpc(tmp_path, store.root, {"poll_interval": 0.3, "models": {"tiny": {}}}) as server:
        http = server.http
        meta = metadata(http)
        assert meta["platform"] == "pytorch_exported"
        for rows in (1, 7, 32):
            x = np.random.default_rng(rows).random((rows, 4), dtype=np.float32).tolist()
            r = http.post("/v2/models/tiny/infer", infer_body(x))
            assert r.status_code == 200, r.text
            got = np.array(r.json()["outputs"][0]["data"]).reshape(rows, 3)
            assert np.allclose(got, expected(0, x), atol=1e-5)
        client = tg.InferenceServerClient(server.grpc_url)
        x7 = np.random.default_rng(7).random((7, 4), dtype=np.float32)
        inp = tg.InferInput("input", [7, 4], "FP32")
        inp.set_data_from_numpy(x7)
        assert np.allclose(client.infer("tiny", [inp]).as_numpy("output"), expected(0, x7.tolist()), atol=1e-5)

        publish_tiny(store, seed=1, formats=("exported",))
        wait_for(lambda: metadata(http)["properties"]["default_version"] == "2", "v2 serves")
        assert publish_tiny(store, seed=2, formats=("exported",)) == 3
        # v4 is v3 with a pickled weight (and a checksum that matches it).
        four = store.root / "tiny" / "4"
        shutil.copytree(store.path("tiny", 3), tmp_path / "staged4")
        manifest = json.loads((tmp_path / "staged4" / "manifest.json").read_text())
        manifest["version"] = 4
        (tmp_path / "staged4" / "manifest.json").write_text(json.dumps(manifest))
        _pickled_weights(tmp_path / "staged4")
        (tmp_path / "staged4").rename(four)
        wait_for(lambda: "4" in metadata(http)["properties"]["rejected"], "v4 rejected", timeout=30)
        reason = metadata(http)["properties"]["rejected"]["4"]
        assert "model.exported.pt2" in reason and "stored pickled" in reason
        wait_for(lambda: metadata(http)["properties"]["default_version"] == "3", "v3 serves, v4 never")
        r = http.post("/v2/models/tiny/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]))
        assert r.status_code == 200 and r.json()["model_version"] == "3"
