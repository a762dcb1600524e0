"""Imported archives served for real: TorchServe's inference API (`/predictions`, `/ping`), its
management describe calls, and the same models over the Open Inference Protocol."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from model_store import ModelStore
from model_store.mar_import import import_mar
from server.handlers.torchserve import preprocess
from tests.server.conftest import ServerProcess

from .conftest import LABELS, Archives, jpeg

ADMIN = {"Authorization": "Bearer admin-secret"}  # TorchServe's token header


@pytest.fixture(scope="module")
def served(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("torchserve")
    store = ModelStore(base / "models")
    import_mar(store, archives.eager, example_input=archives.example, model_class="tests.torchserve.models:TinyNet")
    import_mar(store, archives.torchscript, example_input=archives.example)
    vision = import_mar(store, archives.image)
    (base / "cwd").mkdir()
    config = {
        "poll_interval": 0.3,
        "admin_api_key": "admin-secret",
        "models": {"tiny": {}, "tinyts": {}, "vision": {"handler": vision.handler, "batch_timeout_s": 0.02}},
    }
    server = ServerProcess(base / "models", base / "cwd", config)
    try:
        server.wait_until("/v2/health/ready")
        yield server
    finally:
        server.stop()


def expected_top5(archives: Archives, image: bytes) -> dict[str, float]:
    with torch.inference_mode():
        logits = archives.vision(torch.from_numpy(preprocess(image)[None]))
    probs = torch.softmax(logits, dim=1)[0]
    top = torch.topk(probs, 5)
    return {LABELS[str(int(i))]: float(p) for p, i in zip(top.values, top.indices, strict=True)}


def test_ping_is_torchserves_health_probe(served: ServerProcess) -> None:
    r = served.get("/ping")
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}


def test_image_classifier_answers_top5_labels_by_raw_body_and_form(served: ServerProcess, archives: Archives) -> None:
    image = jpeg(3)
    want = expected_top5(archives, image)
    raw = served.post("/predictions/vision", image)
    assert raw.status_code == 200, raw.text
    got = raw.json()
    assert list(got) == list(want)  # TorchServe's order: most likely first
    assert np.allclose(list(got.values()), list(want.values()), atol=1e-5)
    assert raw.headers["x-model-version"] == "1"
    form = requests.post(served.url + "/predictions/vision", files={"data": ("cat.jpg", image)}, timeout=30)
    assert form.status_code == 200 and form.json() == got
    b64 = requests.post(
        served.url + "/predictions/vision/1", files={"data": (None, base64.b64encode(image))}, timeout=30
    )
    assert b64.status_code == 200 and b64.json() == got  # a text field is base64, as TorchServe reads it


def test_the_same_model_over_v2_and_v1(served: ServerProcess, archives: Archives) -> None:
    image = jpeg(4)
    want = expected_top5(archives, image)
    body = {
        "inputs": [{"name": "data", "datatype": "BYTES", "shape": [1, 1], "data": [base64.b64encode(image).decode()]}]
    }
    r = served.post("/v2/models/vision/infer", body)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["label"]["shape"] == [1, 5] and outs["label"]["data"] == list(want)
    assert np.allclose(outs["probability"]["data"], list(want.values()), atol=1e-5)
    v1 = served.post("/v1/models/vision:predict", {"instances": [{"b64": base64.b64encode(image).decode()}]})
    assert v1.status_code == 200 and v1.json()["predictions"][0]["label"] == [list(want)]


def test_models_without_a_handler_take_json_rows(served: ServerProcess, archives: Archives) -> None:
    x = np.load(archives.example)
    want = archives.tiny(torch.from_numpy(x)).detach().numpy()
    for name in ("tiny", "tinyts"):  # the eager archive (state_dict + class) and the TorchScript one
        r = served.post(f"/predictions/{name}", x.tolist(), headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert np.allclose(np.array(r.json()), want, atol=1e-5)
        r = served.post(
            f"/v2/models/{name}/infer",
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]},
        )
        assert r.status_code == 200 and np.allclose(
            np.array(r.json()["outputs"][0]["data"]).reshape(3, 3), want, atol=1e-5
        )


def test_errors_have_torchserves_shape(served: ServerProcess) -> None:
    r = served.post("/predictions/nope", b"x")
    assert r.status_code == 404 and r.json()["type"] == "ModelNotFoundException" and r.json()["code"] == 404
    r = served.post("/predictions/vision/9", jpeg())
    assert r.status_code == 404 and r.json()["type"] == "ModelVersionNotFoundException", r.text
    r = served.post("/predictions/vision", b"not an image")
    assert r.status_code == 400 and r.json()["type"] == "BadRequestException"
    assert "not an image" in r.json()["message"]
    r = served.post("/predictions/tiny", b"[[1, 2]]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("instances:"), r.text
    r = served.post("/predictions/tiny", b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["message"]
    assert served.post("/predictions/vision", jpeg()).status_code == 200  # nothing above broke it


def test_management_describe_on_the_admin_key(served: ServerProcess) -> None:
    refused = served.get("/models")
    assert refused.status_code == 401 and refused.json()["type"] == "InvalidKeyException"
    listing = served.get("/models", headers=ADMIN).json()
    assert [m["modelName"] for m in listing["models"]] == ["tiny", "tinyts", "vision"]
    [described] = served.get("/models/vision", headers=ADMIN).json()
    assert described["modelName"] == "vision" and described["modelVersion"] == "1"
    assert described["workers"][0]["status"] == "READY" and described["batchSize"] == 32
    assert described["maxBatchDelay"] == 20 and described["isDefault"] is True
    assert served.get("/models/vision/1", headers=ADMIN).status_code == 200
    assert served.get("/models/vision/4", headers=ADMIN).json()["type"] == "ModelVersionNotFoundException"
    assert served.get("/models/nope", headers=ADMIN).status_code == 404


def test_import_and_serve_leave_no_code_from_the_archive_in_the_store(served: ServerProcess) -> None:
    assert not [p for p in Path(served.store).rglob("*.py")]


def test_concurrent_images_each_get_their_own_answer(served: ServerProcess, archives: Archives) -> None:
    """Batched, and decoded in threads once decoding is seen to be slow (server/worker/handled.py):
    each request still gets the answer for its own image."""
    images = [jpeg(10 + i, (300 + 8 * i, 240)) for i in range(16)]
    want = [expected_top5(archives, im) for im in images]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(3):  # bounded: 3 rounds of 16
            got = list(pool.map(lambda im: served.post("/predictions/vision", im).json(), images))
            for g, w in zip(got, want, strict=True):
                assert list(g) == list(w) and np.allclose(list(g.values()), list(w.values()), atol=1e-5)
