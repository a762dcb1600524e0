"""The loader: device and artifact choice, validation before serving, pickles only when trusted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import ModelStore, VersionState
from model_store.policy import VersionPolicy
from server.config import ModelConfig
from server.control.source import StoreSource
from server.ipc.messages import Verdict
from server.worker.loader import Loader, Rejected, pick_device
from tests.conftest import publish_tiny
from tests.fakes import Malicious, TinyMLP, example_input


def verdict(store: ModelStore, name: str, version: int) -> Verdict:
    """What the supervisor hands a worker: the store's verdict on that version."""
    source = StoreSource(store, name, VersionPolicy.parse("latest"))
    handed = source._verdict(store.status(name, version))
    assert handed is not None
    return handed


class _Loader:
    def __init__(self, store: ModelStore, name: str, cfg: ModelConfig) -> None:
        self.store, self.name, self.inner = store, name, Loader(cfg, threads=1)

    def load(self, version: int) -> object:
        return self.inner.load(verdict(self.store, self.name, version))


def loader(store: ModelStore, name: str = "tiny", **cfg: object) -> Loader:
    return _Loader(store, name, dataclasses.replace(ModelConfig(name=name), **cfg))  # type: ignore[return-value]


def test_auto_on_cpu_serves_onnx_and_says_why(store: ModelStore) -> None:
    publish_tiny(store, seed=4)
    s = loader(store).load(1)
    assert (s.artifact, s.device) == ("onnx", "cpu") and "onnxruntime" in s.why
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = TinyMLP(seed=4).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(s.predict({"input": x})["output"], want, atol=1e-5)


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_configured_artifact_is_used(store: ModelStore, fmt: str) -> None:
    publish_tiny(store)
    s = loader(store, artifact=fmt).load(1)
    assert s.artifact == fmt and s.describe()["runtime"] == "torch"


def test_missing_artifact_and_missing_factory_are_rejected(store: ModelStore) -> None:
    publish_tiny(store, formats=("state_dict",))
    with pytest.raises(Rejected, match="asks for artifact 'onnx'"):
        loader(store, artifact="onnx").load(1)
    store.publish("raw", TinyMLP(), example_inputs=example_input(), formats=("state_dict",))
    with pytest.raises(Rejected, match="no servable artifact"):
        loader(store, name="raw").load(1)


def test_tampered_file_is_rejected_before_anything_loads(store: ModelStore) -> None:
    publish_tiny(store)
    handed = verdict(store, "tiny", 1)
    p = store.path("tiny", 1) / "model.onnx"
    p.write_bytes(p.read_bytes()[:-1] + b"\1")
    # The supervisor's next look rejects it ...
    aspired = StoreSource(store, "tiny", VersionPolicy.parse("latest")).poll()
    assert not aspired.verdicts and "model.onnx: sha256 mismatch" in aspired.rejected[1]
    # ... and a worker holding the earlier verdict notices the change with a stat, loading nothing.
    with pytest.raises(Rejected, match=r"model\.onnx: changed since it was verified"):
        Loader(ModelConfig(name="tiny"), threads=1).load(handed)


def test_pickle_serves_only_when_trusted_and_intact(store: ModelStore, tmp_path: Path) -> None:
    store.publish("p", TinyMLP(), example_inputs=example_input(), formats=("pickle",), trust_pickle=True)
    with pytest.raises(Rejected, match="no servable artifact"):
        loader(store, name="p").load(1)
    s = loader(store, name="p", trust_pickle=True).load(1)
    assert s.artifact == "pickle"
    # A swapped-in malicious pickle fails its sha256 before anything unpickles it.
    marker = tmp_path / "pwned"
    path = store.path("p", 1) / "model.pickle.pt"
    torch.save(Malicious(str(marker)), path)
    m = json.loads((path.parent / "manifest.json").read_text())
    m["artifacts"][0]["size"] = path.stat().st_size
    (path.parent / "manifest.json").write_text(json.dumps(m))
    status = store.status("p", 1)
    assert status.state is VersionState.REJECTED and "sha256 mismatch" in status.reason
    assert not marker.exists()


def test_device_choice() -> None:
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
        with pytest.raises(Rejected, match="torch sees 0 CUDA"):
            pick_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_serves_a_validated_version(store: ModelStore) -> None:
    publish_tiny(store)
    s = loader(store, device="cuda").load(1)
    assert s.device == "cuda:0"
    assert s.predict({"input": example_input().numpy()})["output"].shape == (3, 3)
