"""Open Inference Protocol v2 codec: JSON and binary tensor bodies <-> numpy. No server imports,
so every rule here is unit-tested without a server."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model_store.signature import DATATYPES, Signature, datatype_or

HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(Exception):
    """A request the server refuses; `status` is the HTTP code, the message names the problem."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


@dataclass
class InferRequest:
    """A decoded request: input arrays by name, and how each output should be returned."""

    inputs: dict[str, np.ndarray[Any, Any]]
    id: str | None = None
    outputs: list[str] | None = None
    """Requested output names in order; None returns every output."""
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    rows: int = 0


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad(f"{where}: 'parameters' must be an object")
    return params


def _shape(name: str, raw: Any, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise bad(f"input {name!r}: 'shape' must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise bad(f"input {name!r}: shape {raw} has a negative dimension")
    elements = math.prod(raw)
    if elements > max_elements:  # checked before any allocation
        raise bad(f"input {name!r}: shape {raw} has {elements} elements, over the limit of {max_elements}")
    return tuple(raw)


def _array(name: str, spec: Mapping[str, Any], shape: tuple[int, ...], blob: bytes | None) -> np.ndarray[Any, Any]:
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise bad(f"input {name!r}: datatype {datatype!r} is not supported (one of {sorted(DATATYPES)})")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise bad(
                f"input {name!r}: binary_data_size {len(blob)} does not match shape {list(shape)} "
                f"of {datatype} ({count * dtype.itemsize} bytes)"
            )
        return np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    data = spec.get("data")
    if data is None:
        raise bad(f"input {name!r}: no 'data' and no binary_data_size")
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:
        raise bad(f"input {name!r}: 'data' is a ragged nested list") from None
    if arr.size and (arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and dtype.kind in "biu")):
        got = "floats" if arr.dtype.kind == "f" else "non-numeric values"
        raise bad(f"input {name!r}: 'data' must hold {datatype} values, got {got}")
    if arr.size != count:
        raise bad(f"input {name!r}: 'data' has {arr.size} values but shape {list(shape)} needs {count}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            cast = arr.astype(dtype)
    except (FloatingPointError, OverflowError):
        raise bad(f"input {name!r}: values out of range for {datatype}") from None
    if dtype.kind in "iu" and not np.array_equal(cast, arr):
        raise bad(f"input {name!r}: values out of range for {datatype}")
    return cast.reshape(shape)


def decode_infer(body: bytes, header_length: str | None, *, max_elements: int) -> InferRequest:
    """Parse a v2 infer body (JSON, or JSON plus binary tensors); 400 on anything malformed."""
    blob_area = b""
    if header_length is not None:
        try:
            json_len = int(header_length)
        except ValueError:
            raise bad(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < json_len <= len(body):
            raise bad(f"Inference-Header-Content-Length {json_len} is outside the body of {len(body)} bytes")
        body, blob_area = body[:json_len], body[json_len:]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise bad(f"malformed JSON body: {e}") from None
    if not isinstance(req, dict):
        raise bad("request body must be a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad(f"inputs[{i}] must be an object with a string 'name'")
        name = spec["name"]
        if name in arrays:
            raise bad(f"input {name!r} is given twice")
        shape = _shape(name, spec.get("shape"), max_elements)
        size = _parameters(spec, f"input {name!r}").get("binary_data_size")
        blob = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(blob_area):
                raise bad(f"input {name!r}: binary_data_size {size} runs past the end of the body")
            blob, offset = blob_area[offset : offset + size], offset + size
        arrays[name] = _array(name, spec, shape, blob)
    if offset != len(blob_area):
        raise bad(f"body has {len(blob_area) - offset} bytes of binary data no input claims")
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) != 1:
        raise bad(f"inputs disagree on the batch dimension: {sorted(rows)}")
    if 0 in rows:
        raise bad("inputs have no rows (the first dimension is 0)")
    out = InferRequest(arrays, rows=rows.pop())
    if "id" in req:
        if not isinstance(req["id"], str):
            raise bad("'id' must be a string")
        out.id = req["id"]
    params = _parameters(req, "request")
    out.binary_default = bool(params.get("binary_data_output", False))
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            raise bad("'outputs' must be a list")
        out.outputs = []
        for o in req["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise bad("each requested output must be an object with a string 'name'")
            out.outputs.append(o["name"])
            flag = _parameters(o, f"output {o['name']!r}").get("binary_data")
            if flag is not None:
                out.binary[o["name"]] = bool(flag)
    return out


def check_inputs(signature: Signature, req: InferRequest) -> str | None:
    """Why the request's tensors do not fit the model's signature, or None."""
    want = [s.name for s in signature.inputs]
    unknown = [n for n in req.inputs if n not in want]
    if unknown:
        return f"unknown input {unknown[0]!r}; the model takes {want}"
    missing = [n for n in want if n not in req.inputs]
    if missing:
        return f"missing input {missing[0]!r}; the model takes {want}"
    for spec in signature.inputs:
        problem = spec.mismatch(req.inputs[spec.name])
        if problem:
            return problem
    if req.outputs is not None:
        names = [s.name for s in signature.outputs]
        for o in req.outputs:
            if o not in names:
                return f"unknown output {o!r}; the model produces {names}"
    return None


def _data(arr: np.ndarray[Any, Any]) -> Any:
    flat = arr.reshape(-1)
    return flat.tolist() if arr.dtype == np.float16 else flat


def encode_infer(
    model: str, version: int, req: InferRequest, outputs: Mapping[str, np.ndarray[Any, Any]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers; binary outputs follow the JSON header."""
    names: Sequence[str] = req.outputs if req.outputs is not None else list(outputs)
    entries, blobs = [], []
    for name in names:
        arr = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_or(arr),
            "shape": list(arr.shape),
        }
        if req.binary.get(name, req.binary_default):
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _data(arr)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": entries}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
