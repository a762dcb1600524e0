"""The handler API as the server drives it: setup per version, per-request decode and encode,
batch-level hooks, and each failure as the status a client would get (400 or 500 naming it).

The prediction between decode and encode is the real one: the tiny model's ONNX artifact.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store import ModelStore
from model_store.manifest import Manifest
from model_store.runtimes import load_runtime
from server.errors import ServingError
from server.handlers import (
    Arrays,
    BoundHandler,
    Handler,
    HandlerInputError,
    HandlerSetupError,
    TensorInfo,
    handler_signature,
    setup_handler,
    to_json,
)
from server.protocol import InferRequest
from tests.conftest import publish_tiny

LABELS = ["cat", "dog", "bird"]


class ScoreHandler(Handler):
    """The tiny model (4 features -> 3 logits) behind a label and a score."""

    inputs = (TensorInfo("features", "FP32", (-1, 4)),)
    outputs = (TensorInfo("label", "BYTES", (-1,)), TensorInfo("score", "FP32", (-1,)))

    def setup(self, manifest: Manifest, folder: Path) -> None:
        self.labels = json.loads(self.data_file(manifest, folder, "labels.json").read_text())

    def decode_request(self, request: Any) -> Arrays:
        if isinstance(request, InferRequest):
            return {"input": request.inputs["features"].astype(np.float32)}
        if not isinstance(request, dict) or "features" not in request:
            raise HandlerInputError("each instance must be {'features': [4 numbers]}")
        return {"input": np.asarray([request["features"]], dtype=np.float32)}

    def encode_response(self, outputs: Arrays) -> Any:
        logits = outputs["output"]
        best = logits.argmax(axis=1)
        labels = [self.labels[i] for i in best]
        scores = logits.max(axis=1)
        return {"label": labels[0], "score": float(scores[0])} if len(best) == 1 else {"label": labels, "score": scores}


@pytest.fixture
def version(store: ModelStore) -> tuple[Manifest, Path]:
    v = publish_tiny(store, data_files={"labels.json": json.dumps(LABELS).encode()})
    folder = store.path("tiny", v)
    return Manifest.load(folder), folder


@pytest.fixture
def bound(version: tuple[Manifest, Path]) -> BoundHandler:
    return setup_handler(ScoreHandler, *version)


def predict(version: tuple[Manifest, Path], tensors: Arrays) -> Arrays:
    manifest, folder = version
    artifact = manifest.artifact("onnx")
    assert artifact is not None
    return load_runtime("onnx", folder / artifact.path, manifest.signature).predict(tensors)


def rows_of(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, 4)).round(3).tolist()  # type: ignore[no-any-return]


def test_a_batch_of_requests_answers_each_with_its_own_rows(
    version: tuple[Manifest, Path], bound: BoundHandler
) -> None:
    """decode per request -> batch -> the model -> unbatch -> encode per request, as the server runs it."""
    requests: list[Any] = [{"features": row} for row in rows_of(3, 0)]
    features = np.asarray(rows_of(2, 1), dtype=np.float32)
    requests.append(InferRequest({"features": features}, rows=2))
    decoded = [bound.decode(r) for r in requests]
    assert [rows for _, rows in decoded] == [1, 1, 1, 2]
    outputs = predict(version, bound.batch([t for t, _ in decoded]))
    assert outputs["output"].shape == (5, 3)
    parts = bound.unbatch(outputs, [rows for _, rows in decoded])
    answers = [bound.encode_v1(p) for p in parts[:3]]
    alone = [predict(version, bound.decode(r)[0])["output"] for r in requests[:3]]
    for answer, logits in zip(answers, alone, strict=True):
        assert answer == {"label": LABELS[int(logits.argmax())], "score": pytest.approx(float(logits.max()), abs=1e-5)}
        assert isinstance(answer["label"], str) and isinstance(answer["score"], float)
    v2 = bound.encode_v2(parts[3])
    assert v2["label"].dtype == object and v2["label"].shape == (2,) and all(isinstance(b, bytes) for b in v2["label"])
    assert v2["score"].dtype == np.float32 and v2["score"].shape == (2,)
    want = predict(version, {"input": features})["output"]
    assert [b.decode() for b in v2["label"]] == [LABELS[i] for i in want.argmax(axis=1)]


def test_a_single_row_answer_becomes_a_one_row_v2_tensor(bound: BoundHandler) -> None:
    v2 = bound.encode_v2({"output": np.asarray([[0.1, 3.0, 0.2]], dtype=np.float32)})
    assert v2["label"].tolist() == [b"dog"] and v2["score"].tolist() == [3.0]


def test_the_declared_signature_is_what_metadata_shows() -> None:
    assert handler_signature(ScoreHandler) == {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    }


def test_bad_input_is_the_clients_400(bound: BoundHandler) -> None:
    with pytest.raises(ServingError) as e:
        bound.decode({"wrong": 1})
    assert e.value.status == 400 and e.value.message == "each instance must be {'features': [4 numbers]}"


class Buggy(ScoreHandler):
    mode = "raise"

    def decode_request(self, request: Any) -> Arrays:
        return {
            "raise": lambda: {"input": np.zeros((1, 4), np.float32)}["nope"],
            "list": lambda: [np.zeros((1, 4), np.float32)],
            "dtype": lambda: {"input": np.zeros((1, 4))},
            "name": lambda: {"features": np.zeros((1, 4), np.float32)},
            "shape": lambda: {"input": np.zeros((1, 5), np.float32)},
            "norows": lambda: {"input": np.zeros((0, 4), np.float32)},
        }[self.mode]()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "mode, message",
    [
        ("raise", "decode_request failed: KeyError: 'nope'"),
        ("list", "decode_request must return a dict of numpy arrays, got list"),
        ("dtype", "decode_request returned tensor 'input': expected FP32, got FP64"),
        ("name", "decode_request returned tensors ['features']; the model takes ['input']"),
        ("shape", "decode_request returned tensor 'input': expected shape [-1, 4], got [1, 5]"),
        ("norows", "first dimensions (rows) are [0]"),
    ],
)
def test_a_handler_bug_is_a_500_naming_the_handler(version: tuple[Manifest, Path], mode: str, message: str) -> None:
    handler = setup_handler(type("Buggy", (Buggy,), {"mode": mode}), *version)
    with pytest.raises(ServingError) as e:
        handler.decode({"features": [0, 0, 0, 0]})
    assert e.value.status == 500
    assert e.value.message.startswith("handler tests.server.handlers.test_bound:Buggy: ")
    assert message in e.value.message


class BadEncode(ScoreHandler):
    answer: Any = None

    def encode_response(self, outputs: Arrays) -> Any:
        if self.answer == "input-error":
            raise HandlerInputError("no face in this picture")
        return self.answer


@pytest.mark.parametrize(
    "answer, route, status, message",
    [
        ("input-error", "v1", 400, "no face in this picture"),
        ({"label": object()}, "v1", 500, "encode_response returned what JSON cannot hold: a value of type object"),
        ({1: "x"}, "v1", 500, "a dict with non-string keys"),
        ("just text", "v2", 500, "must return a dict of outputs for the v2 route, got str"),
        ({"label": "x"}, "v2", 500, "returned keys ['label']; the handler declares outputs ['label', 'score']"),
        ({"label": "x", "score": "high"}, "v2", 500, "returned output 'score' that does not fit"),
        ({"label": 3, "score": 1.0}, "v2", 500, "BYTES values must be str or bytes"),
        ({"label": "x", "score": [[1.0, 2.0]]}, "v2", 500, "shape [1, 2]"),
    ],
)
def test_encode_failures(version: tuple[Manifest, Path], answer: Any, route: str, status: int, message: str) -> None:
    handler = setup_handler(type("BadEncode", (BadEncode,), {"answer": answer}), *version)
    outputs = {"output": np.zeros((1, 3), np.float32)}
    with pytest.raises(ServingError) as e:
        handler.encode_v1(outputs) if route == "v1" else handler.encode_v2(outputs)
    assert e.value.status == status and message in e.value.message


def test_a_v1_only_handler_may_answer_any_json(version: tuple[Manifest, Path]) -> None:
    handler = setup_handler(
        type("Text", (BadEncode,), {"answer": ["a", np.float32(0.5), b"\xff\x00", np.arange(2)]}), *version
    )
    assert handler.encode_v1({"output": np.zeros((1, 3), np.float32)}) == ["a", 0.5, {"b64": "/wA="}, [0, 1]]


def test_undeclared_outputs_take_the_datatype_of_their_values(version: tuple[Manifest, Path]) -> None:
    cls = type("Undeclared", (BadEncode,), {"outputs": (), "answer": {"name": ["x", "y"], "n": np.asarray([1, 2])}})
    v2 = setup_handler(cls, *version).encode_v2({"output": np.zeros((2, 3), np.float32)})
    assert v2["name"].tolist() == [b"x", b"y"] and v2["n"].dtype == np.int64


def test_to_json_keeps_plain_values() -> None:
    assert to_json({"a": (1, 2.5, None, True), "b": np.asarray([b"ok"], dtype=object)}) == {
        "a": [1, 2.5, None, True],
        "b": ["ok"],
    }


class Padding(ScoreHandler):
    """A batch hook that pads like a text model would: here, features of 2 or 4 values."""

    def decode_request(self, request: Any) -> Arrays:
        return {"input": np.asarray([request["features"]], dtype=np.float32)}

    def batch(self, inputs: list[Arrays]) -> Arrays:
        width = 4
        return {
            "input": np.concatenate([np.pad(i["input"], ((0, 0), (0, width - i["input"].shape[1]))) for i in inputs])
        }


def test_custom_batch_hooks_run_and_are_checked(version: tuple[Manifest, Path]) -> None:
    handler = BoundHandler(Padding(), version[0].signature, "tiny:1")
    # decode's own check wants 4 features; the batch hook is where padding belongs, so call it directly.
    batched = handler.batch([{"input": np.ones((1, 2), np.float32)}, {"input": np.ones((2, 4), np.float32)}])
    assert batched["input"].shape == (3, 4) and batched["input"][0].tolist() == [1, 1, 0, 0]

    class Dropping(ScoreHandler):
        def batch(self, inputs: list[Arrays]) -> Arrays:
            return inputs[0]

    dropping = BoundHandler(Dropping(), version[0].signature, "tiny:1")
    with pytest.raises(ServingError) as e:
        dropping.batch([{"input": np.ones((1, 4), np.float32)}] * 2)
    assert e.value.status == 500 and "batch made 1 rows of the requests' 2" in e.value.message


def test_unbatch_refuses_outputs_that_do_not_cover_the_rows(bound: BoundHandler) -> None:
    with pytest.raises(ServingError) as e:
        bound.unbatch({"output": np.zeros((2, 3), np.float32)}, [1, 2])
    assert e.value.status == 500 and "cannot split output 'output' of shape [2, 3] into [1, 2] rows" in e.value.message
    parts = bound.unbatch({"output": np.arange(9, dtype=np.float32).reshape(3, 3)}, [1, 2])
    assert [p["output"].shape for p in parts] == [(1, 3), (2, 3)] and parts[1]["output"][0, 0] == 3


def test_setup_reads_the_versions_data_file(bound: BoundHandler) -> None:
    assert isinstance(bound.handler, ScoreHandler) and bound.handler.labels == LABELS and bound.served == "tiny:1"


def test_a_version_without_its_data_file_is_rejected_naming_it(store: ModelStore) -> None:
    v = publish_tiny(store)  # published before labels existed
    folder = store.path("tiny", v)
    with pytest.raises(HandlerSetupError) as e:
        setup_handler(ScoreHandler, Manifest.load(folder), folder)
    assert str(e.value) == (
        "handler tests.server.handlers.test_bound:ScoreHandler: tiny:1 has no data file 'labels.json' "
        "(it has none; publish a version with data_files={'labels.json': ...})"
    )


def test_a_setup_that_raises_rejects_the_version_with_its_reason(version: tuple[Manifest, Path]) -> None:
    manifest, folder = version
    (folder / "labels.json").write_text("not json")
    with pytest.raises(HandlerSetupError, match=r"ScoreHandler: setup failed: JSONDecodeError: Expecting value"):
        setup_handler(ScoreHandler, manifest, folder)
    other = dataclasses.replace(manifest, data_files=())
    with pytest.raises(HandlerSetupError, match=r"has no data file 'labels\.json'"):
        setup_handler(ScoreHandler, other, folder)


def test_tensor_info_refuses_what_metadata_could_not_show() -> None:
    with pytest.raises(ValueError, match="datatype 'STRING' is not one of"):
        TensorInfo("x", "STRING")
    with pytest.raises(ValueError, match="shape must be a non-empty list of ints >= -1"):
        TensorInfo("x", "FP32", (-2,))
    assert TensorInfo("x", "BYTES", [-1, 2]).shape == (-1, 2)  # type: ignore[arg-type]
