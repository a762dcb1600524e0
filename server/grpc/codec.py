"""ModelInferRequest/ModelInferResponse <-> numpy, with the same rules as the REST codec.

Inputs come either all in `raw_input_contents` (little-endian values; BYTES as 4-byte
little-endian lengths and their bytes) or all in typed `contents`. Outputs go back raw when the
request was raw, or when an output has no typed field (FP16), else typed: a client gets back
the form it sent (KServe's Python server does the same; Triton always answers raw).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model_store.signature import DATATYPES

from ..errors import ServingError, bad_request
from ..protocol import (
    BYTES,
    OBJECT,
    InferRequest,
    array_from_bytes,
    array_to_bytes,
    check_datatype,
    check_shape,
    datatype_name,
)
from .gen import grpc_service_pb2 as pb

# datatype -> (typed contents field, the numpy dtype protobuf holds it in)
TYPED: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    BYTES: ("bytes_contents", OBJECT),
}


def _typed(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray[Any, Any]:
    if datatype not in TYPED:
        raise bad_request(f"input {name!r}: {datatype} has no typed contents; send it in raw_input_contents")
    field, held = TYPED[datatype]
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise bad_request(f"input {name!r}: {field} has {len(values)} values but shape {list(shape)} needs {count}")
    if datatype == BYTES:
        arr = np.empty(count, dtype=OBJECT)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = np.array(values, dtype=held)
    dtype = DATATYPES[datatype]
    if dtype != held:
        cast = wide.astype(dtype)
        if not np.array_equal(cast, wide):
            raise bad_request(f"input {name!r}: values out of range for {datatype}")
        wide = cast
    return wide.reshape(shape)


def decode_request(msg: pb.ModelInferRequest, max_elements: int) -> InferRequest:
    """The request's tensors, checked like a REST body; ServingError(400) names any problem."""
    if not msg.inputs:
        raise bad_request("'inputs' must be a non-empty list")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; send all inputs raw or none"
        )
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        if name in arrays:
            raise bad_request(f"input {name!r} is given twice")
        datatype = check_datatype(name, tensor.datatype)
        shape = check_shape(name, list(tensor.shape), max_elements)
        if raw:
            if tensor.HasField("contents"):
                raise bad_request(f"input {name!r}: has both contents and raw_input_contents")
            arrays[name] = array_from_bytes(name, datatype, shape, raw[i])
        else:
            arrays[name] = _typed(name, datatype, shape, tensor.contents)
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) != 1:
        raise bad_request(f"inputs disagree on the batch dimension: {sorted(rows)}")
    if 0 in rows:
        raise bad_request("inputs have no rows (the first dimension is 0)")
    req = InferRequest(arrays, id=msg.id, rows=rows.pop())
    if msg.outputs:
        req.outputs = [o.name for o in msg.outputs]
    req.binary_default = bool(raw)  # answer in the form the client sent
    return req


def encode_response(model: str, version: int, req: InferRequest, outputs: dict[str, Any]) -> pb.ModelInferResponse:
    names = req.outputs if req.outputs is not None else list(outputs)
    arrays = [outputs[n] for n in names]
    raw = req.binary_default or any(datatype_name(a) not in TYPED for a in arrays)
    resp = pb.ModelInferResponse(model_name=model, model_version=str(version), id=req.id or "")
    for name, arr in zip(names, arrays, strict=True):
        datatype = datatype_name(arr)
        out = resp.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if raw:
            resp.raw_output_contents.append(array_to_bytes(arr))
        elif datatype == BYTES:
            out.contents.bytes_contents.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.flat)
        else:
            field, held = TYPED[datatype]
            getattr(out.contents, field).extend(arr.reshape(-1).astype(held, copy=False).tolist())
    return resp


# Triton's mapping of its error kinds, applied to our HTTP statuses (numbers of grpc.StatusCode).
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    507: "RESOURCE_EXHAUSTED",  # a model larger than the memory budget
}


def grpc_code_name(error: ServingError) -> str:
    """The gRPC status (by name) for a refusal; any other 5xx is INTERNAL, any other 4xx INVALID_ARGUMENT."""
    return GRPC_CODES.get(error.status, "INTERNAL" if error.status >= 500 else "INVALID_ARGUMENT")
