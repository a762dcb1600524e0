"""The `exported` format (torch.export): published with a dynamic batch, served with the eager
model's outputs, and refused, naming the file and the check, wherever loading would unpickle."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import ModelStore, StoreError
from model_store.manifest import Manifest
from model_store.runtimes import load_runtime
from model_store.torch_export import check_pt2
from tests.conftest import publish_tiny
from tests.fakes import TinyMLP


@pytest.fixture
def exported(store: ModelStore) -> Path:
    publish_tiny(store, formats=("exported", "onnx"))
    return store.path("tiny", 1) / "model.exported.pt2"


def _runtime(path: Path):  # type: ignore[no-untyped-def]
    return load_runtime("exported", path, Manifest.load(path.parent).signature)


def test_published_with_a_dynamic_batch_and_the_eager_outputs(store: ModelStore, exported: Path) -> None:
    report = store.verify("tiny", 1)
    assert report.ok and report.servable == ["exported", "onnx"]
    assert [a["format"] for a in store.manifest("tiny", 1)["artifacts"]] == ["exported", "onnx"]
    model = TinyMLP(seed=0).eval()
    runtime = _runtime(exported)
    for rows in (1, 7, 32):
        x = np.random.default_rng(rows).random((rows, 4), dtype=np.float32)
        got = runtime.predict({"input": x})["output"]
        assert got.shape == (rows, 3)
        assert np.allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a value: torch.export cannot trace it
            return x * 2
        return x


def test_a_failing_export_is_refused_with_torchs_reason(store: ModelStore) -> None:
    with pytest.raises(StoreError, match=r"exported: torch\.export failed: "):
        store.publish("dd", DataDependent(), example_inputs=torch.rand(2, 4), formats=("exported",))
    assert store.versions("dd") == []


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes]) -> Path:
    """A copy of the archive with members replaced or added (keys may be suffixes of names)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist()
        done = set()
        for name in names:
            key = next((k for k in edit if name.endswith(k)), None)
            zout.writestr(name, edit[key] if key else zin.read(name))
            if key:
                done.add(key)
        root = names[0].split("/")[0]
        for key in set(edit) - done:
            zout.writestr(f"{root}/{key}", edit[key])
    return dst


def _config(src: Path, suffix: str) -> dict:  # type: ignore[type-arg]
    with zipfile.ZipFile(src) as zf:
        return json.loads(zf.read(next(n for n in zf.namelist() if n.endswith(suffix))))  # type: ignore[no-any-return]


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_anything_that_would_be_unpickled_is_refused(exported: Path, tmp_path: Path) -> None:
    weights = _config(exported, "model_weights_config.json")
    first = next(iter(weights["config"]))
    weights["config"][first]["use_pickle"] = True
    custom = {"config": {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False}}}
    evil = io.BytesIO()
    torch.save({"x": Evil()}, evil)
    cases = {
        "pickled weight": ({"model_weights_config.json": json.dumps(weights).encode()}, f"{first!r} is stored pickled"),
        "custom object": ({"model_constants_config.json": json.dumps(custom).encode()}, "is a Python object"),
        "legacy weights": ({"data/weights/model.pt": b"x"}, "legacy pickled weights file"),
        "sample inputs": ({"data/sample_inputs/model.pt": evil.getvalue()}, "sample inputs"),
    }
    for case, (edit, reason) in cases.items():
        bad = _rewrite(exported, tmp_path / f"{case}.pt2", edit)
        with pytest.raises(StoreError, match=f"{case}.pt2: .*{reason}.*would be unpickled"):
            check_pt2(bad)
    not_zip = tmp_path / "garbage.pt2"
    not_zip.write_bytes(b"not a program")
    with pytest.raises(StoreError, match=r"garbage\.pt2: not a torch\.export program"):
        _runtime_at(not_zip, exported)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    with pytest.raises(StoreError, match=r"truncated\.pt2: "):
        _runtime_at(truncated, exported)
    state_dict = tmp_path / "sd.pt2"
    torch.save(TinyMLP().state_dict(), state_dict)  # a zip, but torch.save's, not torch.export's
    with pytest.raises(StoreError, match=r"sd\.pt2: not a torch\.export program"):
        _runtime_at(state_dict, exported)


def _runtime_at(path: Path, like: Path) -> None:
    load_runtime("exported", path, Manifest.load(like.parent).signature)
