"""TorchServe's built-in handlers, as modeldock handlers giving the same responses.

`ImageClassifier` is TorchServe's `image_classifier`: an image in (raw bytes, or base64 text),
the torchvision preprocessing it applies (shorter side resized to 256 with bilinear filtering,
224x224 centre crop, /255, ImageNet mean and std), and its top-5 `{label: probability}` out,
labels from the archive's `index_to_name.json`. Written with Pillow and numpy: torchvision
resizes PIL images with Pillow itself, so the model sees the same numbers without torchvision.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from model_store.manifest import Manifest

from ..protocol import InferRequest
from .base import Arrays, Handler, HandlerInputError, HandlerSetupError, TensorInfo

MAPPING_FILE = "index_to_name.json"
MAX_PIXELS = 8192 * 8192  # larger pictures are refused before they are decoded (decompression bombs)
TOPK = 5
RESIZE, CROP = 256, 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_mapping(path: Path) -> dict[str, str]:
    """TorchServe's `index_to_name.json`: {"0": "tench", ...}; a list value means its last item
    (the older `["n01440764", "tench"]` form); `{"object_type_names": [...]}` is a list of names."""
    try:
        mapping = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandlerSetupError(f"{MAPPING_FILE}: unreadable ({e})") from None
    if isinstance(mapping, dict) and isinstance(mapping.get("object_type_names"), list):
        mapping = dict(enumerate(mapping["object_type_names"]))
    if not isinstance(mapping, dict):
        raise HandlerSetupError(f'{MAPPING_FILE} must map class indexes to names: {{"0": "cat", ...}}')
    out = {}
    for key, value in mapping.items():
        name = value[-1] if isinstance(value, list) and value else value
        if not isinstance(name, str):
            raise HandlerSetupError(f"{MAPPING_FILE}: class {key!r} has no name string")
        out[str(key)] = name
    return out


def preprocess(data: bytes) -> np.ndarray[Any, Any]:
    """An encoded image -> the [3, 224, 224] FP32 tensor TorchServe's image_classifier makes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise HandlerInputError(f"image of {img.width}x{img.height} pixels is over the limit of {MAX_PIXELS}")
            rgb = img.convert("RGB")  # TorchServe would fail on a grey or RGBA picture; we convert
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise HandlerInputError(f"not an image this server can read ({e})") from None
    except OSError as e:  # truncated or corrupt data
        raise HandlerInputError(f"image cannot be decoded ({e})") from None
    w, h = rgb.size
    short, long = (w, h) if w <= h else (h, w)
    if short == 0:
        raise HandlerInputError("image has no pixels")
    new_short, new_long = RESIZE, int(RESIZE * long / short)  # torchvision's Resize(256) arithmetic
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = rgb.resize(size, Image.Resampling.BILINEAR) if size != (w, h) else rgb
    rw, rh = resized.size
    if rw < CROP or rh < CROP:
        raise HandlerInputError(f"image of {w}x{h} pixels is too small to crop {CROP}x{CROP}")
    top, left = round((rh - CROP) / 2.0), round((rw - CROP) / 2.0)  # torchvision's CenterCrop
    crop = np.asarray(resized.crop((left, top, left + CROP, top + CROP)), dtype=np.float32)
    crop /= 255.0  # ToTensor, then Normalize: the same float32 operations, in place
    crop -= MEAN
    crop /= STD
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # TorchServe reads a string as base64 of the image
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise HandlerInputError("the image text is not valid base64") from None
    raise HandlerInputError(f"expected an image (bytes, or base64 text), got {type(value).__name__}")


def _raw_or_base64(value: Any) -> bytes:
    """A v2 BYTES element: an image as sent in binary, or its base64 text (a JSON request's
    strings arrive UTF-8 encoded). Image files are never valid strict base64: their first bytes
    (0xFF for JPEG, 0x89 for PNG) are outside its alphabet."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return base64.b64decode(bytes(value), validate=True)
        except (binascii.Error, ValueError):
            return bytes(value)
    return _image_bytes(value)


def _rows(request: Any) -> list[bytes]:
    if isinstance(request, InferRequest):
        images = request.inputs.get("data")
        if images is not None and images.ndim == 2 and images.shape[1] == 1:
            images = images[:, 0]
        if images is None or images.dtype != np.dtype(object) or images.ndim != 1:
            raise HandlerInputError("input 'data' must be a BYTES tensor of shape [n, 1] or [n]: one image per row")
        return [_raw_or_base64(b) for b in images]
    if isinstance(request, dict):
        for key in ("data", "body", "b64"):  # TorchServe's row keys; v1's {"b64": ...}
            value = request.get(key)
            if value:
                return [_image_bytes(value["b64"] if isinstance(value, dict) and "b64" in value else value)]
    raise HandlerInputError('send the image as the body, a form field "data", or {"data": "<base64>"}')


class ImageClassifier(Handler):
    """TorchServe's image_classifier: top-5 classes of an image, `{label: probability}`."""

    inputs = (TensorInfo("data", "BYTES", (-1, 1)),)
    outputs = (TensorInfo("label", "BYTES", (-1, -1)), TensorInfo("probability", "FP32", (-1, -1)))  # top-k per row

    def setup(self, manifest: Manifest, folder: Path) -> None:
        self.input_name = manifest.signature.inputs[0].name
        self.output_name = manifest.signature.outputs[0].name
        classes = manifest.signature.outputs[0].shape[-1]
        self.topk = min(TOPK, classes) if classes > 0 else TOPK
        if manifest.data_file(MAPPING_FILE) is None:
            self.mapping: dict[str, str] | None = None  # TorchServe answers class indexes then
        else:
            self.mapping = load_mapping(self.data_file(manifest, folder, MAPPING_FILE))

    def decode_request(self, request: Any) -> Arrays:
        return {self.input_name: np.stack([preprocess(b) for b in _rows(request)])}

    def _top(self, outputs: Arrays) -> tuple[list[list[str]], np.ndarray[Any, Any]]:
        logits = outputs[self.output_name].astype(np.float32)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.topk]
        names = [[self._name(int(i)) for i in row] for row in order]
        return names, np.take_along_axis(probs, order, axis=1)

    def _name(self, index: int) -> str:
        if self.mapping is None:
            return str(index)
        try:
            return self.mapping[str(index)]
        except KeyError:
            raise HandlerSetupError(f"{MAPPING_FILE} has no name for class {index}") from None

    def encode_response(self, outputs: Arrays) -> Any:
        names, probs = self._top(outputs)
        return {"label": names, "probability": probs}

    def encode_torchserve(self, outputs: Arrays) -> Any:
        names, probs = self._top(outputs)
        row = [{n: float(p) for n, p in zip(ns, ps, strict=True)} for ns, ps in zip(names, probs, strict=True)]
        return row[0] if len(row) == 1 else row
