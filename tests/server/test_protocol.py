"""The Open Inference Protocol codec, without a server."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from model_store.signature import Signature
from server.errors import ServingError
from server.http.encoding import decode_content
from server.protocol import HEADER_LENGTH, check_inputs, decode_infer, encode_infer

SIG = Signature.from_dict(
    {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    }
)


def body(**inp: object) -> bytes:
    spec = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))} | inp
    return json.dumps({"inputs": [spec]}).encode()


def decode(raw: bytes, header: str | None = None):  # type: ignore[no-untyped-def]
    return decode_infer(raw, header, max_elements=10_000)


def test_json_flat_and_nested_data() -> None:
    flat = decode(body())
    nested = decode(body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert flat.rows == 2 and flat.inputs["input"].dtype == np.float32
    assert np.array_equal(flat.inputs["input"], nested.inputs["input"])
    assert check_inputs(SIG, flat) is None


def binary_body(arr: np.ndarray, size: int | None = None, extra: bytes = b"") -> tuple[bytes, str]:
    raw = arr.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(arr.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + raw + extra, str(len(head))


def test_binary_in_and_out_round_trip() -> None:
    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    raw, header = binary_body(arr)
    req = decode(raw, header)
    assert np.array_equal(req.inputs["input"], arr) and req.binary_default
    out = {"output": np.ones((2, 3), np.float32)}
    content, headers = encode_infer("m", 3, req, out)
    n = int(headers[HEADER_LENGTH])
    doc = json.loads(content[:n])
    assert doc["model_version"] == "3" and doc["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.array_equal(np.frombuffer(content[n:], np.float32).reshape(2, 3), out["output"])


def test_json_response_carries_id_and_version() -> None:
    req = decode(json.dumps({"id": "r1", "inputs": [json.loads(body())["inputs"][0]]}).encode())
    content, headers = encode_infer("m", 7, req, {"output": np.zeros((2, 3), np.float32)})
    doc = json.loads(content)
    assert headers["content-type"] == "application/json"
    assert doc == {
        "model_name": "m",
        "model_version": "7",
        "id": "r1",
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 3], "data": [0.0] * 6}],
    }


@pytest.mark.parametrize(
    ("raw", "header", "message"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (body(datatype="FP99"), None, "datatype 'FP99'"),
        (body(shape=[3, 4]), None, "has 8 values but shape [3, 4] needs 12"),
        (body(shape=[10**12, 64]), None, "over the limit"),
        (body(shape=[-1, 4]), None, "negative dimension"),
        (body(shape="2x4"), None, "list of integers"),
        (body(data=["a"] * 8), None, "non-numeric"),
        (body(datatype="INT32", data=[0.5] * 8), None, "got floats"),
        (body(datatype="UINT8", data=[300] * 8), None, "out of range"),
        (body(data=[[1, 2], [3]]), None, "ragged"),
        (body(shape=[0, 4], data=[]), None, "no rows"),
        (body(), "abc", "not an integer"),
        (body(), "99999", "outside the body"),
    ],
)
def test_malformed_requests_are_400_with_a_message(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ServingError) as e:
        decode(raw, header)
    assert e.value.status == 400 and message in e.value.message


def test_binary_sizes_that_lie_are_refused() -> None:
    arr = np.zeros((2, 4), np.float32)
    raw, header = binary_body(arr, size=16)
    with pytest.raises(ServingError, match="does not match shape"):
        decode(raw, header)
    raw, header = binary_body(arr, size=64)
    with pytest.raises(ServingError, match="runs past the end"):
        decode(raw, header)
    raw, header = binary_body(arr, extra=b"xx")
    with pytest.raises(ServingError, match="no input claims"):
        decode(raw, header)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "x"}, "unknown input 'x'"),
        ({"shape": [2, 2], "data": [1, 2, 3, 4]}, "expected shape [-1, 4], got [2, 2]"),
        ({"datatype": "FP64"}, "expected FP32, got FP64"),
    ],
)
def test_signature_mismatches_name_the_tensor(spec: dict, message: str) -> None:
    req = decode(body(**spec))
    assert message in (check_inputs(SIG, req) or "")


def test_unknown_requested_output() -> None:
    req = decode(json.dumps({"inputs": json.loads(body())["inputs"], "outputs": [{"name": "logits"}]}).encode())
    assert "unknown output 'logits'" in (check_inputs(SIG, req) or "")


def test_response_without_a_request_id_has_an_empty_id() -> None:
    content, _ = encode_infer("m", 1, decode(body()), {"output": np.zeros((2, 3), np.float32)})
    assert json.loads(content)["id"] == ""


def test_nan_and_infinity_are_written_and_read_as_tritons_tokens() -> None:
    values = np.array([[1.5, np.nan, np.inf, -np.inf]], np.float32)
    for arr in (values, values.astype(np.float16), values.astype(np.float64)):
        content, _ = encode_infer("m", 1, decode(body()), {"output": arr})
        assert b'"data":[1.5,NaN,Infinity,-Infinity]' in content
        back = json.loads(content)["outputs"][0]["data"]  # Python's parser, like rapidjson, takes them
        assert back[0] == 1.5 and np.isnan(back[1]) and back[2:] == [np.inf, -np.inf]
    sent = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, "x", 2, 3]}]})
    raw = sent.replace('"x"', "NaN").replace("2, 3", "Infinity, -Infinity").encode()
    got = decode(raw).inputs["input"]
    assert np.isnan(got[0, 1]) and got[0, 2] == np.inf and got[0, 3] == -np.inf


def test_bytes_tensors_in_json_and_binary() -> None:
    doc = {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]}]}
    req = decode(json.dumps(doc).encode())
    assert req.inputs["t"].tolist() == ["héllo".encode(), b""]
    assert "expected FP32, got BYTES" in (check_inputs(SIG, _renamed(decode(json.dumps(doc).encode()))) or "")
    req.binary_default = True
    content, headers = encode_infer("m", 1, req, {"t": req.inputs["t"]})
    n = int(headers[HEADER_LENGTH])
    head = json.loads(content[:n])
    blob = content[n:]
    assert head["outputs"][0]["datatype"] == "BYTES" and blob == b"\x06\x00\x00\x00h\xc3\xa9llo\x00\x00\x00\x00"
    spec = {"name": "t", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
    head_in = json.dumps({"inputs": [spec]}).encode()
    assert decode(head_in + blob, str(len(head_in))).inputs["t"].tolist() == ["héllo".encode(), b""]
    req.binary_default = False
    assert json.loads(encode_infer("m", 1, req, {"t": req.inputs["t"]})[0])["outputs"][0]["data"] == ["héllo", ""]
    with pytest.raises(ServingError, match="must hold strings for BYTES"):
        decode(json.dumps({"inputs": [{**doc["inputs"][0], "data": [1, 2]}]}).encode())


def _renamed(req):  # type: ignore[no-untyped-def]
    req.inputs = {"input": req.inputs["t"]}
    return req


def test_gzip_and_deflate_bodies_are_inflated() -> None:
    raw = body()
    assert decode_content(gzip.compress(raw), "gzip", 10_000) == raw
    assert decode_content(zlib.compress(raw), "deflate", 10_000) == raw
    assert decode_content(raw, "identity", 10_000) == raw and decode_content(raw, None, 10) == raw


@pytest.mark.parametrize(
    ("data", "coding", "status", "message"),
    [
        (b"{}", "br", 415, "Content-Encoding 'br' is not supported"),
        (gzip.compress(b" " * 1_000_000), "gzip", 413, "inflates to over the limit of 10000"),
        (zlib.compress(b" " * 1_000_000), "deflate", 413, "inflates to over the limit of 10000"),
        (b"not gzip at all", "gzip", 400, "not valid gzip data"),
        (gzip.compress(b"{}", mtime=0)[:-4], "gzip", 400, "truncated gzip data"),
    ],
)
def test_content_encoding_refusals(data: bytes, coding: str, status: int, message: str) -> None:
    with pytest.raises(ServingError) as e:
        decode_content(data, coding, 10_000)
    assert e.value.status == status and message in e.value.message
