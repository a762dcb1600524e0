"""A store made by a release before data files: `add_labels` republishes its newest digits
version with labels.json (same weights, no training), so the demo's handler can serve it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model_store import ModelStore, VersionState
from model_store.demo import LABELS, NAME, ConvNet, add_labels
from model_store.manifest import Manifest
from model_store.runtimes import load_runtime


def test_add_labels_republishes_the_newest_version_with_its_labels(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert add_labels(store.root) is None  # no digits model: nothing to do
    torch.manual_seed(0)
    old = ConvNet().eval()
    x = torch.rand(4, 1, 8, 8)
    # As the demo of an earlier release published it: no data files.
    store.publish(
        NAME, old, example_inputs=x, metrics={"val_acc": 0.5}, model_factory=ConvNet, factory_kwargs={"num_classes": 10}
    )
    store.publish(
        NAME,
        old,
        example_inputs=x,
        metrics={"val_acc": 0.9},
        formats=("onnx", "state_dict"),
        model_factory=ConvNet,
        factory_kwargs={"num_classes": 10},
    )
    assert add_labels(store.root) == 3
    folder = store.path(NAME, 3)
    manifest = Manifest.load(folder)
    assert store.status(NAME, 3).state is VersionState.VALID
    assert json.loads((folder / "labels.json").read_text()) == LABELS
    assert [a.format for a in manifest.artifacts] == ["onnx", "state_dict"]
    assert manifest.metrics == {"val_acc": 0.9} and manifest.training == {"republished_from": 2}
    got = load_runtime("onnx", folder / "model.onnx", manifest.signature).predict({"input": x.numpy()})["output"]
    assert np.allclose(got, old(x).detach().numpy(), atol=1e-5)  # the same weights
    assert add_labels(store.root) is None  # the newest has its labels now
