"""The demo's handler on the trained demo model: the shipped image answers "7", over both routes'
request forms, as PNG or JPEG; bad images are the client's 400; a version without labels is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_store.manifest import Manifest
from model_store.runtimes import load_runtime
from server.errors import ServingError
from server.handlers import BoundHandler, HandlerSetupError, handler_signature, setup_handler
from server.handlers.digits import DigitsHandler, image_to_digit
from server.protocol import BYTES, InferRequest, decode_infer
from tests.server.handlers.conftest import DIGIT_7


@pytest.fixture(scope="module")
def served(digits_store: Path) -> tuple[BoundHandler, Any]:
    folder = digits_store / "digits" / "2"
    manifest = Manifest.load(folder)
    runtime = load_runtime("onnx", folder / "model.onnx", manifest.signature)
    return setup_handler(DigitsHandler, manifest, folder), runtime


def answer(served: tuple[BoundHandler, Any], request: Any, route: str = "v1") -> Any:
    handler, runtime = served
    tensors, _ = handler.decode(request)
    outputs = runtime.predict(tensors)
    return handler.encode_v1(outputs) if route == "v1" else handler.encode_v2(outputs)


def b64(data: bytes) -> dict[str, Any]:
    return {"image": {"b64": base64.b64encode(data).decode()}}


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_the_shipped_image_is_a_seven_over_v1(served: tuple[BoundHandler, Any]) -> None:
    got = answer(served, b64(DIGIT_7.read_bytes()))
    assert got["label"] == "7" and 0.5 < got["probability"] <= 1.0
    assert set(got) == {"label", "probability"}


def test_the_shipped_image_is_a_seven_over_v2_json_and_binary(served: tuple[BoundHandler, Any]) -> None:
    png = DIGIT_7.read_bytes()
    # Binary: the image's bytes with their 4-byte length prefix, as tritonclient sends BYTES.
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": BYTES, "shape": [1], "parameters": {"binary_data_size": len(png) + 4}}
            ]
        }
    ).encode()
    body = head + len(png).to_bytes(4, "little") + png
    req = decode_infer(body, str(len(head)), max_elements=1 << 20)
    out = answer(served, req, "v2")
    assert out["label"].tolist() == [b"7"] and out["probability"].dtype == np.float32 and out["probability"][0] > 0.5
    # Two images in one request: one row each.
    req = InferRequest({"image": np.asarray([png, png], dtype=object)}, rows=2)
    out = answer(served, req, "v2")
    assert out["label"].tolist() == [b"7", b"7"] and out["probability"].shape == (2,)
    # [n, 1], the shape the metadata declares (Triton's one value per row), reads the same.
    req = InferRequest({"image": np.asarray([[png], [png]], dtype=object)}, rows=2)
    assert answer(served, req, "v2")["label"].tolist() == [b"7", b"7"]


def test_jpeg_and_light_on_dark_read_the_same(served: tuple[BoundHandler, Any]) -> None:
    img = Image.open(DIGIT_7)
    want = image_to_digit(DIGIT_7.read_bytes())
    jpeg = image_to_digit(encoded(img.convert("RGB"), "JPEG"))
    inverted = image_to_digit(encoded(Image.eval(img, lambda p: 255 - p), "PNG"))
    assert np.abs(jpeg - want).max() <= 2 / 16 and np.array_equal(inverted, want)
    assert answer(served, b64(encoded(img.convert("RGB"), "JPEG")))["label"] == "7"
    # A transparent PNG: ink on nothing is ink on paper.
    rgba = Image.new("RGBA", img.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(img, lambda p: 255 - p))
    assert np.abs(image_to_digit(encoded(rgba, "PNG")) - want).max() <= 2 / 16


def test_training_digits_drawn_as_images_come_back(served: tuple[BoundHandler, Any]) -> None:
    """The preprocessing is the training data's: its own digits, enlarged and placed anywhere in a
    bigger picture, are read back as the model reads the originals."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(y), 120, replace=False)
    correct = 0
    for i in picks:
        ink = (x[i].reshape(8, 8) / 16 * 230).astype(np.uint8)
        digit = Image.fromarray(255 - ink).resize((64, 64), Image.Resampling.BILINEAR)
        page = Image.new("L", (104, 104), 255)
        page.paste(digit, (int(rng.integers(0, 40)), int(rng.integers(0, 40))))
        correct += answer(served, b64(encoded(page, "PNG")))["label"] == str(y[i])
    assert correct / len(picks) >= 0.9


def _huge_png() -> bytes:
    return encoded(Image.new("1", (5000, 5000), 1), "PNG")  # small on disk, 25 M pixels


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"image": {"b64": "not base64!"}}, "'b64' is not valid base64"),
        ({"image": {"b64": 7}}, "'b64' must be a base64 string, got int"),
        ({"image": "raw"}, 'each instance must be {"image": {"b64": "<base64 of a PNG or JPEG>"}}'),
        ("just a string", "each instance must be"),
        (b64(b"GIF89a not an image"), "image: not a PNG or JPEG this server can read"),
        (b64(encoded(Image.new("L", (8, 8), 0), "GIF")), "image: not a PNG or JPEG"),
        (b64(DIGIT_7.read_bytes()[:300]), "image: cannot be decoded"),
        (b64(encoded(Image.new("L", (40, 40), 255), "PNG")), "image: no digit found (the image is blank)"),
        (b64(_huge_png()), "image of 5000x5000 pixels is over the limit of 16777216"),
        (
            InferRequest({"image": np.zeros((1, 4), np.float32)}, rows=1),
            "input 'image' must be a BYTES tensor of shape [n, 1] or [n]",
        ),
        (InferRequest({"pixels": np.zeros((1,), object)}, rows=1), "input 'image' must be a BYTES tensor"),
    ],
)
def test_bad_images_are_the_clients_400(served: tuple[BoundHandler, Any], request_: Any, message: str) -> None:
    with pytest.raises(ServingError) as e:
        served[0].decode(request_)
    assert e.value.status == 400 and message in e.value.message


def test_the_declared_signature_is_an_image_in_a_label_and_probability_out() -> None:
    assert handler_signature(DigitsHandler) == {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
        ],
    }


def test_labels_come_from_the_version(digits_store: Path, tmp_path: Path) -> None:
    """A version published before labels existed is refused naming the file; labels that do not
    fit the model are refused; other labels answer as written."""
    folder = digits_store / "digits" / "2"
    manifest = Manifest.load(folder)
    with pytest.raises(HandlerSetupError, match=r"digits:2 has no data file 'labels\.json'"):
        setup_handler(DigitsHandler, dataclasses.replace(manifest, data_files=()), folder)
    copy = tmp_path / "2"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "labels.json").write_text(json.dumps(["zero", "one"]))
    with pytest.raises(HandlerSetupError, match=r"labels\.json must be a list of 10 strings"):
        setup_handler(DigitsHandler, manifest, copy)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (copy / "labels.json").write_text(json.dumps(words))
    handler = setup_handler(DigitsHandler, manifest, copy)
    runtime = load_runtime("onnx", copy / "model.onnx", manifest.signature)
    tensors, _ = handler.decode(b64(DIGIT_7.read_bytes()))
    assert handler.encode_v1(runtime.predict(tensors))["label"] == "seven"
