"""Open Inference Protocol v2 codec: JSON and binary tensor bodies <-> numpy. No server imports,
so every rule here is unit-tested without a server.

BYTES tensors are numpy object arrays of `bytes`: JSON strings (UTF-8) or, in binary form, each
element as a 4-byte little-endian length and its bytes (Triton's layout, shared by gRPC's raw
contents). NaN and +-Inf in JSON follow Triton: written and read as the tokens `NaN`,
`Infinity` and `-Infinity` (as rapidjson with kWriteNanAndInfFlag does), never as `null`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model_store.signature import DATATYPES, Signature, datatype_or

from .errors import bad_request

HEADER_LENGTH = "inference-header-content-length"
BYTES = "BYTES"
OBJECT = np.dtype(object)
_LENGTH = struct.Struct("<I")


bad = bad_request  # every decoding problem is the client's: 400


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


def is_count(text: str) -> bool:
    """ASCII digits only. `str.isdigit()` also accepts "²", which `int()` refuses (a 500 where a
    404 or 400 belongs), and other scripts' digits, which no client means as a version."""
    return text.isascii() and text.isdigit()


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad(f"{where}: 'parameters' must be an object")
    return params


def check_shape(name: str, raw: Any, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise bad(f"input {name!r}: 'shape' must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise bad(f"input {name!r}: shape {raw} has a negative dimension")
    elements = math.prod(raw)
    if elements > max_elements:  # checked before any allocation
        raise bad(f"input {name!r}: shape {raw} has {elements} elements, over the limit of {max_elements}")
    return tuple(raw)


def check_datatype(name: str, datatype: Any) -> str:
    if datatype != BYTES and datatype not in DATATYPES:
        raise bad(f"input {name!r}: datatype {datatype!r} is not supported (one of {sorted([*DATATYPES, BYTES])})")
    return str(datatype)


def datatype_name(arr: np.ndarray[Any, Any]) -> str:
    return BYTES if arr.dtype == OBJECT else datatype_or(arr)


def _split_bytes(name: str, blob: bytes | memoryview, count: int) -> list[bytes]:
    """BYTES elements from Triton's binary layout: each a 4-byte LE length, then its bytes."""
    view, offset = memoryview(blob), 0
    items: list[bytes] = []
    for _ in range(count):
        if offset + 4 > len(view):
            raise bad(f"input {name!r}: BYTES data ends inside element {len(items)} of {count}")
        (size,) = _LENGTH.unpack_from(view, offset)
        if offset + 4 + size > len(view):
            raise bad(f"input {name!r}: BYTES element {len(items)} of {size} bytes runs past the data")
        items.append(bytes(view[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    if offset != len(view):
        raise bad(f"input {name!r}: {len(view) - offset} bytes of BYTES data after the {count} elements of its shape")
    return items


def _objects(items: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    arr = np.empty(len(items), dtype=OBJECT)
    arr[:] = items
    return arr.reshape(shape)


def array_from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], blob: bytes | memoryview
) -> np.ndarray[Any, Any]:
    """A tensor from its binary form (REST binary extension, gRPC raw contents)."""
    count = math.prod(shape)
    if datatype == BYTES:
        return _objects(_split_bytes(name, blob, count), shape)
    dtype = DATATYPES[datatype]
    if len(blob) != count * dtype.itemsize:
        raise bad(
            f"input {name!r}: binary data of {len(blob)} bytes does not match shape {list(shape)} "
            f"of {datatype} ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def array_to_bytes(arr: np.ndarray[Any, Any]) -> bytes:
    """A tensor's binary form: little-endian values, or length-prefixed BYTES elements."""
    if arr.dtype == OBJECT:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1).tolist()]
        return b"".join(_LENGTH.pack(len(v)) + v for v in items)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def array_from_values(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from JSON values (a flat or nested list; strings for BYTES), checked against its
    datatype and shape."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:
        raise bad(f"input {name!r}: 'data' is a ragged nested list") from None
    if datatype == BYTES:
        if arr.size and arr.dtype.kind not in "US":
            raise bad(f"input {name!r}: 'data' must hold strings for BYTES")
        if arr.size != count:
            raise bad(f"input {name!r}: 'data' has {arr.size} values but shape {list(shape)} needs {count}")
        flat = arr.reshape(-1).tolist()
        return _objects([v.encode() if isinstance(v, str) else bytes(v) for v in flat], shape)
    dtype = DATATYPES[datatype]
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


def _array(name: str, spec: Mapping[str, Any], shape: tuple[int, ...], blob: bytes | None) -> np.ndarray[Any, Any]:
    datatype = check_datatype(name, spec.get("datatype"))
    if blob is not None:
        return array_from_bytes(name, datatype, shape, blob)
    data = spec.get("data")
    if data is None:
        raise bad(f"input {name!r}: no 'data' and no binary_data_size")
    return array_from_values(name, datatype, shape, data)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        # Triton's clients write NaN and +-Inf as bare tokens, which orjson refuses; the standard
        # parser takes them (only this rare path pays for it).
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise bad(f"malformed JSON body: {e}") from None


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
    req = _loads(body)
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
        shape = check_shape(name, spec.get("shape"), max_elements)
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
        arr = req.inputs[spec.name]
        if arr.dtype == OBJECT:  # no stored signature holds BYTES
            return f"tensor {spec.name!r}: expected {spec.datatype}, got BYTES"
        problem = spec.mismatch(arr)
        if problem:
            return problem
    if req.outputs is not None:
        names = [s.name for s in signature.outputs]
        for o in req.outputs:
            if o not in names:
                return f"unknown output {o!r}; the model produces {names}"
    return None


_NON_FINITE = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def _floats_with_tokens(values: list[float] | np.ndarray[Any, Any], flat: np.ndarray[Any, Any]) -> orjson.Fragment:
    """orjson writes NaN/Inf as null; put Triton's tokens in their places instead."""
    parts = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    for i in np.flatnonzero(~np.isfinite(flat)).tolist():
        parts[i] = _NON_FINITE[str(float(flat[i]))]
    return orjson.Fragment(b"[" + b",".join(parts) + b"]")


def _data(arr: np.ndarray[Any, Any]) -> Any:
    flat = arr.reshape(-1)
    if arr.dtype == OBJECT:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    values = flat.tolist() if arr.dtype == np.float16 else flat
    if arr.dtype.kind == "f" and not np.isfinite(flat).all():
        return _floats_with_tokens(values, flat)
    return values


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
            "datatype": datatype_name(arr),
            "shape": list(arr.shape),
        }
        if req.binary.get(name, req.binary_default):
            raw = array_to_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _data(arr)
        entries.append(entry)
    # `id` always: KServe's InferenceResponse requires it (the request's, or "").
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "id": req.id or "", "outputs": entries}
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def decode_instances(body: bytes) -> list[Any]:
    """The `instances` of a v1 (KServe / TF Serving REST) predict body; 400 on anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise bad(f"malformed JSON body: {e}") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise bad('body must be {"instances": [...]} with at least one instance')
    return instances
