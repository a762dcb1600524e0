"""The TorchServe pieces in-process: the handler's label file and images, and a request's row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.errors import ServingError
from server.handlers import HandlerInputError, HandlerSetupError
from server.handlers.torchserve import load_mapping, preprocess
from server.http.torchserve import request_row, ts_error

from .conftest import jpeg


def test_label_files_in_each_of_torchserves_forms(tmp_path: Path) -> None:
    f = tmp_path / "index_to_name.json"
    f.write_text(json.dumps({"0": ["n01440764", "tench"], "1": "goldfish"}))
    assert load_mapping(f) == {"0": "tench", "1": "goldfish"}  # a list means its last item
    f.write_text(json.dumps({"object_type_names": ["cat", "dog"]}))
    assert load_mapping(f) == {"0": "cat", "1": "dog"}
    for bad in ('["cat"]', '{"0": 7}', "{"):
        f.write_text(bad)
        with pytest.raises(HandlerSetupError, match=r"index_to_name\.json"):
            load_mapping(f)


def test_images_of_any_mode_and_shape_become_a_224_crop() -> None:
    x = preprocess(jpeg(size=(500, 300)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    buf = io.BytesIO()
    Image.new("L", (256, 256), 128).save(buf, format="PNG")  # grey: converted to RGB, not refused
    grey = preprocess(buf.getvalue())
    assert np.allclose(grey[0], (128 / 255 - 0.485) / 0.229, atol=1e-5)
    for bad in (b"", b"GIF89a garbage"):
        with pytest.raises(HandlerInputError, match="not an image"):
            preprocess(bad)


def test_a_request_becomes_the_row_torchserve_handlers_get() -> None:
    assert request_row(b"\xff\xd8raw", "image/jpeg") == {"body": b"\xff\xd8raw"}
    assert request_row(b'{"a": [1, 2]}', "application/json") == {"body": {"a": [1, 2]}}
    assert request_row("héllo".encode(), "text/plain; charset=utf-8") == {"body": "héllo"}
    form = (
        b'--XX\r\nContent-Disposition: form-data; name="data"; filename="a.jpg"\r\n\r\n\xff\xd8\x00bin\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--XX--\r\n'
    )
    assert request_row(form, "multipart/form-data; boundary=XX") == {"data": b"\xff\xd8\x00bin", "note": "hi"}
    with pytest.raises(ServingError, match="not JSON"):
        request_row(b"{", "application/json")
    with pytest.raises(ServingError, match="boundary"):
        request_row(b"no parts", "multipart/form-data; boundary=YY")


def test_errors_are_worded_as_torchserve_does() -> None:
    reply = ts_error(ServingError(503, "busy", {"retry-after": "1"}))
    assert json.loads(reply.body) == {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}
    assert reply.headers["retry-after"] == "1"
    assert json.loads(ts_error(ServingError(500, "x")).body)["type"] == "InternalServerException"
