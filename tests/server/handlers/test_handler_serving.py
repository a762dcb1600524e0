"""The digits demo's image handler served for real: v1 and v2, errors, setup failures, reloads."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store import ModelStore
from model_store.demo import LABELS, LABELS_FILE, NAME, ConvNet
from model_store.manifest import Manifest
from model_store.verify import load_examples
from server.handlers.digits import DigitsHandler
from tests.server.conftest import ServerProcess, reserve_port
from tests.server.handlers.conftest import DIGIT_7
from tests.server.test_hot_reload import wait_for

HANDLER = "server.handlers.digits:DigitsHandler"
IMAGE = {"image": {"b64": base64.b64encode(DIGIT_7.read_bytes()).decode()}}


def republish(store: ModelStore, labels: list[str] | None) -> int:
    """The newest version's weights again, with these labels (None: without a labels file)."""
    folder = store.path(NAME, store.versions(NAME)[-1])
    manifest = Manifest.load(folder)
    assert manifest.model_factory is not None
    model = ConvNet(**manifest.model_factory.kwargs)
    model.load_state_dict(torch.load(folder / "model.state_dict.pt", weights_only=True))
    inputs, _ = load_examples(folder / manifest.examples.path)
    data = {LABELS_FILE: json.dumps(labels).encode()} if labels is not None else None
    return store.publish(
        NAME,
        model.eval(),
        example_inputs=tuple(torch.from_numpy(a) for a in inputs.values()),
        model_factory=ConvNet,
        factory_kwargs=manifest.model_factory.kwargs,
        data_files=data,
    )


@pytest.fixture(scope="module")
def served(digits_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ModelStore]]:
    base = tmp_path_factory.mktemp("handlers")
    shutil.copytree(digits_store, base / "models")
    (base / "cwd").mkdir()
    config = {"poll_interval": 0.3, "models": {NAME: {"handler": HANDLER, "batch_timeout_s": 0.05}}}
    server = ServerProcess(base / "models", base / "cwd", config)
    try:
        server.wait_until(f"/v2/models/{NAME}/ready")
        yield server, ModelStore(base / "models")
    finally:
        server.stop()


def test_an_image_round_trip_over_v1_and_v2(served: tuple[ServerProcess, ModelStore]) -> None:
    server, _ = served
    r = server.post(f"/v1/models/{NAME}:predict", {"instances": [IMAGE, IMAGE]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["label"] for p in predictions] == ["7", "7"] and 0 < predictions[0]["probability"] <= 1
    # The same answer as the handler and the model give in-process.
    meta = server.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probability"}

    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    # BYTES in the binary extension (JSON BYTES are UTF-8 strings: no place for a PNG).
    for shape in ([1], [1, 1]):  # [n] and the declared [n, 1]
        inp = httpclient.InferInput("image", shape, "BYTES")
        inp.set_data_from_numpy(np.array([DIGIT_7.read_bytes()], dtype=object).reshape(shape), binary_data=True)
        result = client.infer(NAME, [inp])
        assert result.as_numpy("label").tolist() == [b"7"]
        assert 0 < float(result.as_numpy("probability")[0]) <= 1
    client.close()


def test_a_bad_input_is_400_and_the_others_in_its_batch_are_answered(served: tuple[ServerProcess, ModelStore]) -> None:
    server, _ = served
    bodies = [{"instances": [IMAGE]}, {"instances": [{"image": {"b64": "not base64!"}}]}, {"instances": [IMAGE]}]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # within the 50 ms batch window
        replies = list(pool.map(lambda b: server.post(f"/v1/models/{NAME}:predict", b), bodies))
    assert [r.status_code for r in replies] == [200, 400, 200]
    assert "'b64' is not valid base64" in replies[1].json()["error"]
    v2 = server.post(
        f"/v2/models/{NAME}/infer", {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]}
    )
    assert v2.status_code == 400 and "BYTES" in v2.json()["error"]


def test_setup_failures_reject_the_version_and_new_labels_arrive_with_their_version(
    served: tuple[ServerProcess, ModelStore],
) -> None:
    server, store = served

    def answer() -> tuple[str, str]:
        r = server.post(f"/v1/models/{NAME}:predict", {"instances": [IMAGE]})
        return r.headers["x-model-version"], r.json()["predictions"][0]["label"]

    before, label = answer()
    missing = republish(store, None)  # published before the labels existed: setup cannot run
    wait_for(lambda: str(missing) in server.get(f"/v2/models/{NAME}").json()["properties"]["rejected"], "rejected", 60)
    reason = server.get(f"/v2/models/{NAME}").json()["properties"]["rejected"][str(missing)]
    assert LABELS_FILE in reason
    assert answer() == (before, label)  # the previous version keeps serving

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert len(words) == len(LABELS)
    renamed = republish(store, words)
    wait_for(lambda: answer()[0] == str(renamed), "the new version answers", 60)
    assert answer() == (str(renamed), "seven")  # its labels came with it


def test_the_handler_in_process_agrees_with_the_server(served: tuple[ServerProcess, ModelStore]) -> None:
    server, store = served
    version = server.post(f"/v1/models/{NAME}:predict", {"instances": [IMAGE]}).headers["x-model-version"]
    folder = store.path(NAME, int(version))
    manifest = Manifest.load(folder)
    handler = DigitsHandler()
    handler.setup(manifest, folder)
    model = ConvNet(**manifest.model_factory.kwargs)  # type: ignore[union-attr]
    model.load_state_dict(torch.load(folder / "model.state_dict.pt", weights_only=True))
    tensors = handler.decode_request(IMAGE)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(tensors[manifest.signature.inputs[0].name])).numpy()
    want = handler.encode_response({manifest.signature.outputs[0].name: logits})
    got = server.post(f"/v1/models/{NAME}:predict", {"instances": [IMAGE]}).json()["predictions"][0]
    assert got["label"] == want["label"] and abs(got["probability"] - want["probability"]) < 1e-3


def test_the_image_handler_over_grpc(digits_store: Path, tmp_path: Path) -> None:
    """BYTES in, the handler's outputs back, over the gRPC service (tritonclient.grpc)."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    shutil.copytree(digits_store, tmp_path / "models")
    (tmp_path / "cwd").mkdir()
    holder = reserve_port()
    port = holder.getsockname()[1]
    config = {"models": {NAME: {"handler": HANDLER}}}
    server = ServerProcess(tmp_path / "models", tmp_path / "cwd", config, env={"MODELDOCK_GRPC_PORT": str(port)})
    try:
        server.wait_until(f"/v2/models/{NAME}/ready")
        holder.close()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(lambda: client.is_server_live(), "gRPC up", 60)
        meta = client.get_model_metadata(NAME, as_json=True)
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("image", "BYTES")]
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([DIGIT_7.read_bytes()], dtype=object))
        result = client.infer(NAME, [inp])
        assert result.as_numpy("label").tolist() == [b"7"]
        assert 0 < float(result.as_numpy("probability")[0]) <= 1
        bad = grpcclient.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=object))
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT"):  # the handler's 400, as Triton maps it
            client.infer(NAME, [bad])
        client.close()
    finally:
        server.stop()
