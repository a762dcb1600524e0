"""A hostile store under load: broken versions are pending or rejected with a reason, the served
version stays, zero requests fail, and an untrusted pickle never runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import Malicious, TinyMLP, example_input
from tests.server.conftest import Load, ServerProcess, infer_body
from tests.server.test_hot_reload import clone, wait_for


def relist(folder: Path, store: ModelStore) -> None:
    """Make the manifest agree with the files on disk (a tamperer who also edits the manifest)."""
    m = json.loads((folder / "manifest.json").read_text())
    for entry in [*m["artifacts"], m["examples"]]:
        p = folder / entry["path"]
        entry["size"] = p.stat().st_size
        entry["sha256"] = store.hashes.sha256(p) if p.is_file() else entry["sha256"]
    (folder / "manifest.json").write_text(json.dumps(m))


def test_hostile_versions_never_serve_and_nothing_fails(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models", trust_pickle=True)
    publish_tiny(store, seed=0)
    trusted_v1 = store.publish(
        "trusted", TinyMLP(), example_inputs=example_input(), formats=("pickle",), trust_pickle=True
    )
    config = {
        "poll_interval": 0.5,
        "models": {"tiny": {}, "trusted": {"trust_pickle": True, "artifact": "pickle"}},
    }
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]), threads=3)
    untrusted_marker, trusted_marker = tmp_path / "untrusted-ran", tmp_path / "trusted-ran"
    try:
        # 2: a model that returns NaN (state_dict weights replaced, manifest updated to match).
        nan = clone(store, 1, 2)
        weights = TinyMLP().state_dict()
        weights["l2.bias"] = torch.full_like(weights["l2.bias"], float("nan"))
        torch.save(weights, nan / "model.state_dict.pt")
        relist(nan, store)
        # 3: a wrong signature (the manifest promises 5 features; examples have 4).
        wrong = clone(store, 1, 3)
        m = json.loads((wrong / "manifest.json").read_text())
        m["signature"]["inputs"][0]["shape"] = [-1, 5]
        (wrong / "manifest.json").write_text(json.dumps(m))
        # 4: an "artifact" that is a FIFO: reading it would block forever.
        fifo = clone(store, 1, 4)
        (fifo / "model.onnx").unlink()
        os.mkfifo(fifo / "model.onnx")
        m = json.loads((fifo / "manifest.json").read_text())
        next(a for a in m["artifacts"] if a["format"] == "onnx")["size"] = 0
        (fifo / "manifest.json").write_text(json.dumps(m))
        # 5: a pickle that would run code, in a model that does not trust pickles.
        evil = clone(store, 1, 5)
        for a in ("model.onnx", "model.torchscript.pt", "model.state_dict.pt"):
            (evil / a).unlink()
        torch.save(Malicious(str(untrusted_marker)), evil / "model.pickle.pt")
        m = json.loads((evil / "manifest.json").read_text())
        m["artifacts"] = [{"format": "pickle", "path": "model.pickle.pt", "sha256": "0" * 64, "size": 0}]
        (evil / "manifest.json").write_text(json.dumps(m))
        relist(evil, store)
        # trusted:2 — the documented risk: with trust_pickle a pickle whose checksum matches runs.
        risky = store.root / "trusted" / "2"
        shutil.copytree(store.path("trusted", trusted_v1), risky)
        torch.save(Malicious(str(trusted_marker)), risky / "model.pickle.pt")
        m = json.loads((risky / "manifest.json").read_text())
        m["version"] = 2
        (risky / "manifest.json").write_text(json.dumps(m))
        relist(risky, store)

        def rejected() -> dict[str, str]:
            return server.get("/v2/models/tiny").json()["properties"]["rejected"]  # type: ignore[no-any-return]

        # 5 too: until the server has examined the pickle, "it did not run" would prove nothing.
        wait_for(lambda: {"2", "3", "4", "5"} <= set(rejected()), "2, 3, 4 and 5 rejected", timeout=20)
        reasons = rejected()
        assert "non-finite" in reasons["2"]
        assert "do not match signature" in reasons["3"] or "expected shape [-1, 5]" in reasons["3"]
        assert "not a regular file" in reasons["4"]
        assert "trust_pickle" in reasons["5"]
        wait_for(lambda: "2" in server.get("/v2/models/trusted").json()["properties"]["rejected"], "trusted:2 examined")
        mark = load.count()
        wait_for(lambda: load.count() > mark + 50, "still serving")
    finally:
        load.stop()
    assert {code for code, _ in load.results} == {200} and not load.errors
    assert load.versions_since(0) == {"1"}
    assert not untrusted_marker.exists()  # nothing of the untrusted pickle ran
    assert trusted_marker.exists()  # trust_pickle means trusting the store's writers: documented
    assert "trusted pickle" in server.log_path.read_text()
    assert server.get("/v2/models/trusted").json()["properties"]["version"] == "1"
