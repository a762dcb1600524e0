"""The demo's handler: a PNG or JPEG of a handwritten digit in, `{"label": "7", "probability": 0.98}` out.

The model (`model_store.demo.ConvNet`) was trained on scikit-learn's 8x8 digits, which come from
NIST's preprocessing: a 32x32 bitmap of the digit, its height filling the box and its width
centred, counted in 4x4 blocks (0..16 pixels on per block); the demo scales them by 1/16. This
handler does the same to an image, so a photo or a drawing meets the model as its training data
did. The labels come from the version's `labels.json`.
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

LABELS_FILE = "labels.json"
MAX_PIXELS = 4096 * 4096  # a larger picture is refused before it is decoded (decompression bombs)
_BOX = 32  # NIST's bitmap side; 4x4 blocks of it make the 8x8 image


def image_to_digit(data: bytes) -> np.ndarray[Any, Any]:
    """A PNG or JPEG -> the [1, 8, 8] FP32 image the model takes (0..1, as in training)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            if img.width * img.height > MAX_PIXELS:
                raise HandlerInputError(f"image of {img.width}x{img.height} pixels is over the limit of {MAX_PIXELS}")
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # Transparent pixels count as paper, whatever colour they hide.
                rgba = img.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(paper, rgba)  # type: ignore[assignment]
            gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise HandlerInputError(f"image: not a PNG or JPEG this server can read ({e})") from None
    except OSError as e:  # truncated or corrupt data
        raise HandlerInputError(f"image: cannot be decoded ({e})") from None
    return _digit_from_gray(gray)


def _digit_from_gray(gray: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    from PIL import Image

    # Ink is whatever differs from the paper: dark on light or light on dark.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if np.median(border) >= 0.5 else gray
    ink = np.clip((ink - ink.min()) / max(float(ink.max() - ink.min()), 1e-6), 0.0, 1.0)
    ys, xs = np.nonzero(ink > 0.5)
    if ys.size == 0 or float(ink.max() - ink.min()) < 1e-3:
        raise HandlerInputError("image: no digit found (the image is blank)")
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = _BOX / max(h, w)  # the height fills the box (the width, for a digit wider than tall)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(crop).resize((nw, nh), resample), dtype=np.float32)
    canvas = np.zeros((_BOX, _BOX), dtype=np.float32)
    top, left = (_BOX - nh) // 2, (_BOX - nw) // 2
    canvas[top : top + nh, left : left + nw] = small
    bits = canvas >= 0.5
    counts = bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # pixels on per 4x4 block: 0..16
    out: np.ndarray[Any, Any] = (counts.astype(np.float32) / 16.0)[np.newaxis]
    return out


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise HandlerInputError(f"'b64' must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HandlerInputError("'b64' is not valid base64") from None


class DigitsHandler(Handler):
    """Serves the demo's digits model: one image per row, its label and probability back."""

    # [n, 1], as Triton spells one value per row: tools that build requests from the metadata
    # (perf_analyzer) cannot send a tensor whose rows have no dimension. [n] is read as well.
    inputs = (TensorInfo("image", "BYTES", (-1, 1)),)
    outputs = (TensorInfo("label", "BYTES", (-1,)), TensorInfo("probability", "FP32", (-1,)))

    def setup(self, manifest: Manifest, folder: Path) -> None:
        path = self.data_file(manifest, folder, LABELS_FILE)
        try:
            labels = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HandlerSetupError(f"{LABELS_FILE}: unreadable ({e})") from None
        classes = manifest.signature.outputs[0].shape[-1]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) != classes:
            raise HandlerSetupError(f"{LABELS_FILE} must be a list of {classes} strings, one per model output")
        self.labels = labels
        self.input_name = manifest.signature.inputs[0].name
        self.output_name = manifest.signature.outputs[0].name

    def decode_request(self, request: Any) -> Arrays:
        if isinstance(request, InferRequest):
            images = request.inputs.get("image")
            if images is not None and images.ndim == 2 and images.shape[1] == 1:
                images = images[:, 0]
            if images is None or images.dtype != np.dtype(object) or images.ndim != 1:
                raise HandlerInputError(
                    "input 'image' must be a BYTES tensor of shape [n, 1] or [n]: one encoded image per row"
                )
            blobs = list(images)
        elif isinstance(request, dict) and isinstance(request.get("image"), dict):
            blobs = [_b64(request["image"].get("b64"))]
        elif isinstance(request, dict) and "b64" in request:
            blobs = [_b64(request["b64"])]
        else:
            raise HandlerInputError('each instance must be {"image": {"b64": "<base64 of a PNG or JPEG>"}}')
        return {self.input_name: np.stack([image_to_digit(b) for b in blobs])}

    def encode_response(self, outputs: Arrays) -> Any:
        logits = outputs[self.output_name].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        labels = [self.labels[i] for i in best]
        chosen = [round(float(p), 6) for p in probs[np.arange(len(best)), best]]
        if len(labels) == 1:
            return {"label": labels[0], "probability": chosen[0]}
        return {"label": labels, "probability": chosen}
