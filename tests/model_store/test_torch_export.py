"""The `exported` format (torch.export .pt2) in the store, and the aoti environment checks (no compile here)."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from model_store import ModelStore, StoreError, VersionState
from model_store.manifest import SCHEMA_PATH
from model_store.runtimes import load_runtime
from model_store.torch_export import build_environment, environment_problem, machine_environment
from server.config import ModelConfig
from server.ipc.messages import Verdict
from server.worker.loader import Loader
from tests.conftest import publish_tiny
from tests.fakes import Malicious, TinyMLP


class Branchy(nn.Module):
    """Data-dependent control flow: jit.trace records one branch, torch.export refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x) if x.sum() > 0 else -self.l(x)


class Overflow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 0.0


def reseal(store: ModelStore, folder: Path) -> None:
    """Recompute sizes and sha256 in the manifest, as a writer who changed a file on purpose would."""
    m = json.loads((folder / "manifest.json").read_text())
    for a in m["artifacts"]:
        p = folder / a["path"]
        a["size"], a["sha256"] = p.stat().st_size, store.hashes.sha256(p)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def exported(store: ModelStore) -> ModelStore:
    publish_tiny(store, formats=("onnx", "exported"))
    return store


def test_exported_lands_verified_with_a_dynamic_batch(exported: ModelStore) -> None:
    m = exported.manifest("tiny", 1)
    jsonschema.validate(m, json.loads(SCHEMA_PATH.read_text()))
    art = next(a for a in m["artifacts"] if a["format"] == "exported")
    assert m["schema_version"] == 3 and art["path"] == "model.exported.pt2" and len(art["sha256"]) == 64
    report = exported.verify("tiny", 1)
    assert report.ok and set(report.servable) == {"onnx", "exported"}
    folder = exported.path("tiny", 1)
    manifest = exported.status("tiny", 1).manifest
    assert manifest is not None
    runtime = load_runtime("exported", folder / "model.exported.pt2", manifest.signature)
    for rows in (1, 7, 32):
        x = torch.randn(rows, 4)
        with torch.no_grad():
            want = TinyMLP(seed=0).eval()(x).numpy()
        np.testing.assert_allclose(runtime.predict({"input": x.numpy()})["output"], want, rtol=1e-5, atol=1e-5)


def test_a_failing_export_is_refused_and_the_other_formats_land(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    x = torch.ones(3, 4)
    with caplog.at_level(logging.WARNING, "model_store.publish"):
        v = store.publish("b", Branchy(), example_inputs=x, formats=("torchscript", "exported"))
    assert [a["format"] for a in store.manifest("b", v)["artifacts"]] == ["torchscript"]
    assert store.manifest("b", v)["schema_version"] == 1
    (record,) = [r for r in caplog.records if "exported" in r.getMessage()]
    assert "exported: torch.export failed:" in record.getMessage() and "\n" not in record.getMessage()
    with pytest.raises(StoreError, match="no format could be exported"):
        store.publish("b", Branchy(), example_inputs=x, formats=("exported",))


def test_non_finite_exported_outputs_are_refused(store: ModelStore) -> None:
    with pytest.raises(StoreError, match="exported: output 'output' has non-finite values"):
        store.publish("nan", Overflow(), example_inputs=torch.ones(2, 4), formats=("exported",))
    assert store.versions("nan") == []


def _rewrite(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite a zip with some members' contents replaced (a crafted archive)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for suffix, data in replace.items():
        members = {n: (data if n.endswith(suffix) else d) for n, d in members.items()}
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)


@pytest.mark.parametrize("bad", ["state_dict", "truncated", "pickled_inputs", "pickled_weights", "tampered"])
def test_bad_pt2_files_are_refused_naming_the_file_and_check(exported: ModelStore, tmp_path: Path, bad: str) -> None:
    folder = exported.path("tiny", 1)
    pt2 = folder / "model.exported.pt2"
    marker = tmp_path / "pwned"
    if bad == "state_dict":  # a zip torch wrote, but not an ExportedProgram
        torch.save(TinyMLP().state_dict(), pt2)
    elif bad == "truncated":
        pt2.write_bytes(pt2.read_bytes()[: pt2.stat().st_size // 2])
    elif bad == "pickled_inputs":  # torch.export.load would retry these with weights_only=False
        buf = tmp_path / "evil.pt"
        torch.save(Malicious(str(marker)), buf)
        _rewrite(pt2, {"data/sample_inputs/model.pt": buf.read_bytes()})
    elif bad == "pickled_weights":
        with zipfile.ZipFile(pt2) as z:
            (cfg_name,) = [n for n in z.namelist() if n.endswith("model_weights_config.json")]
            cfg = json.loads(z.read(cfg_name))
        next(iter(cfg["config"].values()))["use_pickle"] = True
        _rewrite(pt2, {"model_weights_config.json": json.dumps(cfg).encode()})
    else:
        data = bytearray(pt2.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pt2.write_bytes(bytes(data))
    if bad != "tampered":
        reseal(exported, folder)
    status = ModelStore(exported.root).status("tiny", 1)  # a fresh store, as a server would look
    assert status.state is VersionState.REJECTED
    assert status.reason.startswith("model.exported.pt2: "), status.reason
    expected = {
        "state_dict": "not a torch.export archive",
        "truncated": "unreadable torch.export archive",
        "pickled_inputs": "unreadable torch.export archive",
        "pickled_weights": "stored as a pickle or custom object",
        "tampered": "sha256 mismatch",
    }[bad]
    assert expected in status.reason
    assert not marker.exists()


def test_environment_problem_names_what_differs() -> None:
    here = machine_environment()
    built = build_environment()
    assert environment_problem(built, here) is None
    assert "torch '0.1'" in str(environment_problem({**built, "torch": "0.1"}, here))
    assert "lacks" in str(environment_problem({**built, "cpu_isa": ["avx1024"]}, here))
    assert "device 'cuda'" in str(environment_problem({**built, "device": "cuda"}, here))
    assert environment_problem(None, here) == "no build environment recorded"


def test_an_aoti_package_built_elsewhere_is_skipped_for_the_next_artifact(exported: ModelStore) -> None:
    """No compile: a package whose record says another torch is never opened, so any bytes do."""
    folder = exported.path("tiny", 1)
    shutil.copyfile(folder / "model.exported.pt2", folder / "model.aoti.pt2")
    m = json.loads((folder / "manifest.json").read_text())
    env = {**build_environment(), "torch": "2.99.0"}
    m["artifacts"].append(
        {"format": "aoti", "path": "model.aoti.pt2", "sha256": "0" * 64, "size": 0, "environment": env}
    )
    (folder / "manifest.json").write_text(json.dumps(m))
    reseal(exported, folder)
    status = ModelStore(exported.root).status("tiny", 1)
    assert status.state is VersionState.VALID and "aoti" not in status.servable
    assert status.report is not None and any("aoti: cannot run here: built for torch" in n for n in status.report.notes)
    assert status.manifest is not None
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())
    servable = Loader(ModelConfig(name="tiny", max_batch_size=4), threads=1).load(
        Verdict(version=1, folder=folder, manifest=status.manifest, stats=stats)
    )
    assert servable.artifact == "exported"
    assert "aoti: cannot run here: built for torch '2.99.0'" in servable.describe()["choice"]
