"""The handler that docs/handlers.md shows works as written: its code is taken from the page,
installed as a module and run on a model of the same shape (4 numbers in, 3 classes out)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from model_store import ModelStore
from model_store.manifest import Manifest
from model_store.runtimes import load_runtime
from server.errors import ServingError
from server.handlers import load_handler, setup_handler
from server.protocol import InferRequest
from tests.conftest import publish_tiny

DOC = Path(__file__).resolve().parents[3] / "docs" / "handlers.md"


@pytest.fixture
def doc_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    code = next(b for b in blocks if "class IrisHandler(Handler)" in b)
    assert len(code.splitlines()) <= 40
    pkg = tmp_path / "docpkg_h14"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "handlers.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "docpkg_h14", raising=False)
    return "docpkg_h14.handlers:IrisHandler"


def test_the_documented_handler_serves_both_routes(store: ModelStore, doc_package: str) -> None:
    labels = ["setosa", "versicolor", "virginica"]
    norm = {"mean": [5.8, 3.0, 3.8, 1.2], "std": [0.8, 0.4, 1.8, 0.8]}
    v = publish_tiny(
        store, data_files={"labels.json": json.dumps(labels).encode(), "norm.json": json.dumps(norm).encode()}
    )
    folder = store.path("tiny", v)
    manifest = Manifest.load(folder)
    handler = setup_handler(load_handler(doc_package), manifest, folder)
    model = load_runtime("onnx", folder / "model.onnx", manifest.signature)
    flower = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    tensors, rows = handler.decode(flower)
    x = (np.float32([[5.1, 3.5, 1.4, 0.2]]) - np.float32(norm["mean"])) / np.float32(norm["std"])
    assert rows == 1 and np.allclose(tensors["input"], x)
    logits = model.predict(tensors)["output"][0]
    v1 = handler.encode_v1(model.predict(tensors))
    assert v1["species"] == [labels[int(logits.argmax())]] and 0 < v1["score"][0] <= 1
    req = InferRequest({"measurements": np.float32([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])}, rows=2)
    tensors, rows = handler.decode(req)
    v2 = handler.encode_v2(model.predict(tensors))
    assert rows == 2 and v2["species"].shape == (2,) and v2["species"][0] == v1["species"][0].encode()
    assert v2["score"].dtype == np.float32
    with pytest.raises(ServingError) as e:
        handler.decode({"sepal_length": 5.1})
    assert e.value.status == 400 and "each instance needs the numbers" in e.value.message
