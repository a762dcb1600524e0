"""The same archives in real TorchServe 0.12 and in modeldock after `import-mar`: the same answers
to the same requests. Needs TorchServe in .venv/peers/torchserve (`scripts/install_torchserve.sh`,
several GB, so `make test` skips it where it is not installed) and Java."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import ServerProcess as BenchServer
from bench.torchserve import TS_VENV, post, start_torchserve
from model_store import ModelStore
from model_store.mar_import import import_mar
from tests.server.conftest import ServerProcess

from .conftest import VISION_FILE, Archives, jpeg, make_mar

pytestmark = pytest.mark.skipif(
    not (TS_VENV / "bin" / "torchserve").exists() or shutil.which("java") is None,
    reason=f"TorchServe not installed in {TS_VENV} (scripts/install_torchserve.sh) or no Java",
)


@pytest.fixture(scope="module")
def both(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BenchServer, ServerProcess]]:
    """Three image-classifier archives: eager (model file + state_dict), TorchScript with labels,
    TorchScript without (TorchServe then answers class indexes)."""
    work = tmp_path_factory.mktemp("parity")
    torch.save(archives.vision.state_dict(), work / "weights.pt")
    labels = archives.image.parent.parent / "index_to_name.json"
    with_labels = archives.image.parent.parent / "vision.pt"
    mars = [
        make_mar(work, "eagervision", work / "weights.pt", "image_classifier", labels, model_file=VISION_FILE),
        make_mar(work, "tsvision", with_labels, "image_classifier", labels),
        make_mar(work, "nolabels", with_labels, "image_classifier"),
    ]
    store = ModelStore(work / "models")
    models = {}
    for mar in mars:
        klass = "tests.torchserve.vision_model:TinyVision" if mar.stem == "eagervision" else None
        report = import_mar(store, mar, model_class=klass)
        models[report.name] = {"handler": report.handler}
    ts = start_torchserve(mars, work)
    try:
        (work / "cwd").mkdir()
        md = ServerProcess(work / "models", work / "cwd", {"models": models})
        try:
            md.wait_until("/v2/health/ready")
            yield ts, md
        finally:
            md.stop()
    finally:
        ts.stop()


@pytest.mark.parametrize("model", ["eagervision", "tsvision", "nolabels"])
def test_same_answers_as_torchserve(both: tuple[BenchServer, ServerProcess], model: str) -> None:
    ts, md = both
    for seed in range(6):
        image = jpeg(seed, (280 + 24 * seed, 200 + 10 * seed))
        status, theirs = post(ts.port, image, model)
        ours = md.post(f"/predictions/{model}", image)
        assert status == 200 and ours.status_code == 200, (theirs, ours.text)
        mine = ours.json()
        assert list(mine) == list(theirs), f"image {seed}: top-5 labels differ"
        assert np.allclose(list(mine.values()), list(theirs.values()), rtol=0, atol=1e-5)
    assert (Path(md.store) / model).is_dir()
