"""Publishing around a failing torch.export, and the aoti environment checks and fallback (no compile here)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from model_store import ModelStore, StoreError, VersionState
from model_store.aoti import build_environment, environment_problem, machine_environment
from server.config import ModelConfig
from server.ipc.messages import Verdict
from server.worker.loader import Loader
from tests.conftest import publish_tiny


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
    publish_tiny(store, formats=("exported",))
    return store


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
    with pytest.raises(
        StoreError,
        match=r"no format could be exported: exported: torch\.export failed: .*; aoti: torch\.export failed: ",
    ):
        store.publish("b", Branchy(), example_inputs=x, formats=("exported", "aoti"))


def test_non_finite_exported_outputs_are_refused(store: ModelStore) -> None:
    with pytest.raises(StoreError, match="exported: output 'output' has non-finite values"):
        store.publish("nan", Overflow(), example_inputs=torch.ones(2, 4), formats=("exported",))
    assert store.versions("nan") == []


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
    m["schema_version"] = 3  # the first schema with aoti (a manifest saying 1 is malformed)
    (folder / "manifest.json").write_text(json.dumps(m))
    reseal(exported, folder)
    status = ModelStore(exported.root).status("tiny", 1)
    assert status.state is VersionState.VALID and "aoti" not in status.servable
    assert status.report is not None and any("aoti: cannot run here: built for torch" in n for n in status.report.notes)
    assert status.manifest is not None
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())
    servable = Loader(ModelConfig(name="tiny", max_batch_size=4, trust_native_code=True), threads=1).load(
        Verdict(version=1, folder=folder, manifest=status.manifest, stats=stats)
    )
    assert servable.artifact == "exported"
    assert "aoti: cannot run here: built for torch '2.99.0'" in servable.describe()["choice"]
    # Without trust_native_code an AOTInductor package is never opened: it is native code.
    untrusted = Loader(ModelConfig(name="tiny", max_batch_size=4), threads=1).load(
        Verdict(version=1, folder=folder, manifest=status.manifest, stats=stats)
    )
    assert untrusted.artifact == "exported" and "aoti" not in untrusted.describe()["choice"].split("(")[0]


def test_ls_and_verify_show_the_formats_and_why_aoti_is_skipped(
    exported: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    test_an_aoti_package_built_elsewhere_is_skipped_for_the_next_artifact(exported)
    for argv in (["ls", "--store", str(exported.root)], ["verify", "tiny:1", "--store", str(exported.root)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "exported,aoti" in out and "verified" in out and "tiny:1 ok (exported max error" in out
    assert out.count("aoti: cannot run here: built for torch '2.99.0'") == 2


def test_artifact_fastest_times_each_loadable_artifact_and_keeps_the_quickest(store: ModelStore) -> None:
    import time

    publish_tiny(store, formats=("onnx", "torchscript", "exported"))
    status = store.status("tiny", 1)
    assert status.manifest is not None
    folder = store.path("tiny", 1)
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())
    started = time.perf_counter()
    servable = Loader(ModelConfig(name="tiny", artifact="fastest", max_batch_size=8), threads=1).load(
        Verdict(version=1, folder=folder, manifest=status.manifest, stats=stats)
    )
    assert time.perf_counter() - started < 10  # three loads plus at most ~0.1 s of timing each
    choice = servable.describe()["choice"]
    assert choice.startswith(f"{servable.artifact} on cpu: the fastest at warm-up on a 8-row batch (")
    assert all(f"{fmt} " in choice for fmt in ("onnx", "torchscript", "exported")), choice
