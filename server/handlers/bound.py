"""A handler set up for one loaded version, every call guarded: what the server calls.

Each call checks what the handler returned, so a handler's bug is a 500 naming the handler and
what was wrong, a `HandlerInputError` is the client's 400, and neither fails other requests:
`decode` and `encode` are per request; only `batch`/`unbatch` fail a whole batch.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from model_store.manifest import Manifest
from model_store.signature import DATATYPES, Signature, datatype_or

from ..errors import ServingError
from .base import BYTES, Arrays, Handler, HandlerInputError, HandlerSetupError, TensorInfo

OBJECT = np.dtype(object)


def handler_name(cls: type[Handler]) -> str:
    """`module:QualName`, the form the config names it by."""
    return f"{cls.__module__}:{cls.__qualname__}"


def handler_signature(cls: type[Handler]) -> dict[str, list[dict[str, Any]]]:
    """The declared inputs and outputs in the metadata's form (`{"inputs": [...], "outputs": [...]}`)."""
    return {"inputs": [t.to_dict() for t in cls.inputs], "outputs": [t.to_dict() for t in cls.outputs]}


def setup_handler(cls: type[Handler], manifest: Manifest, folder: Path) -> BoundHandler:
    """A new instance of `cls` set up for this version; `HandlerSetupError` with the reason to
    reject the version when construction or `setup` raises."""
    name = handler_name(cls)
    try:
        handler = cls()
        handler.setup(manifest, folder)
    except HandlerSetupError as e:
        raise HandlerSetupError(f"handler {name}: {e}") from None
    except Exception as e:  # whatever a user's setup raises rejects only this version
        raise HandlerSetupError(f"handler {name}: setup failed: {type(e).__name__}: {e}") from None
    return BoundHandler(handler, manifest.signature, f"{manifest.name}:{manifest.version}")


class BoundHandler:
    """One handler instance, set up for the version `served` ("model:version")."""

    def __init__(self, handler: Handler, signature: Signature, served: str) -> None:
        self.handler = handler
        self.signature = signature
        self.served = served
        self.name = handler_name(type(handler))
        self.decode_s = 0.0  # a moving average of decode_request's time, kept by the worker

    def _fail(self, hook: str, e: BaseException) -> NoReturn:
        if isinstance(e, HandlerInputError):
            raise ServingError(400, str(e)) from None
        raise ServingError(500, f"handler {self.name}: {hook} failed: {type(e).__name__}: {e}") from None

    def _wrong(self, hook: str, problem: str) -> NoReturn:
        raise ServingError(500, f"handler {self.name}: {hook} {problem}")

    # ---- per request, before the batch ------------------------------------------------------
    def decode(self, request: Any) -> tuple[Arrays, int]:
        """The model's input tensors for one request and the rows they make; 400 or 500."""
        try:
            tensors = self.handler.decode_request(request)
        except Exception as e:
            self._fail("decode_request", e)
        return tensors, self._check_inputs_of("decode_request", tensors)

    def _check_inputs_of(self, hook: str, tensors: Any) -> int:
        """The rows of tensors meant for the model, which must fit its signature (500 if not)."""
        if not isinstance(tensors, Mapping) or not all(isinstance(a, np.ndarray) for a in tensors.values()):
            self._wrong(hook, f"must return a dict of numpy arrays, got {_kind(tensors)}")
        want = [s.name for s in self.signature.inputs]
        if sorted(tensors) != sorted(want):
            self._wrong(hook, f"returned tensors {sorted(tensors)}; the model takes {want}")
        for spec in self.signature.inputs:
            problem = spec.mismatch(tensors[spec.name])
            if problem:
                self._wrong(hook, f"returned {problem}")
        rows = {a.shape[0] for a in tensors.values()}
        if len(rows) != 1 or 0 in rows:
            self._wrong(hook, f"returned tensors whose first dimensions (rows) are {sorted(rows)}")
        return int(rows.pop())

    # ---- the batch --------------------------------------------------------------------------
    def batch(self, inputs: list[Arrays]) -> Arrays:
        """The tensors of a batch's decoded requests as one set (a failure fails the batch: 500)."""
        try:
            batched = self.handler.batch(inputs)
        except Exception as e:
            self._fail("batch", _as_server_fault(e))
        expected = sum(next(iter(one.values())).shape[0] for one in inputs)
        got = self._check_inputs_of("batch", batched)
        if got != expected:
            self._wrong("batch", f"made {got} rows of the requests' {expected}")
        return batched

    def unbatch(self, outputs: Arrays, rows: list[int]) -> list[Arrays]:
        """Each request's share of the batch's output tensors."""
        total = sum(rows)
        if type(self.handler).unbatch is Handler.unbatch:
            bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total]
            if bad:
                self._wrong(
                    "unbatch", f"cannot split output {bad[0]!r} of shape {list(outputs[bad[0]].shape)} into {rows} rows"
                )
        try:
            parts = self.handler.unbatch(outputs, rows)
        except Exception as e:
            self._fail("unbatch", _as_server_fault(e))
        if not isinstance(parts, list) or len(parts) != len(rows):
            self._wrong("unbatch", f"must return a list of {len(rows)} dicts, got {_kind(parts)}")
        return parts

    # ---- per request, after the batch -------------------------------------------------------
    def encode(self, outputs: Arrays) -> Any:
        """The handler's response for one request, as it returned it."""
        try:
            return self.handler.encode_response(outputs)
        except Exception as e:
            self._fail("encode_response", e)

    def encode_torchserve(self, outputs: Arrays) -> Any:
        """One response of TorchServe's predictions route, made plain JSON like v1's."""
        try:
            response = self.handler.encode_torchserve(outputs)
        except Exception as e:
            self._fail("encode_torchserve", e)
        try:
            return to_json(response)
        except TypeError as e:
            self._wrong("encode_torchserve", f"returned what JSON cannot hold: {e}")

    def encode_v1(self, outputs: Arrays) -> Any:
        """One prediction of a v1 response: the response made plain JSON (numpy to lists,
        bytes to UTF-8 text or `{"b64": ...}`)."""
        response = self.encode(outputs)
        try:
            return to_json(response)
        except TypeError as e:
            self._wrong("encode_response", f"returned what JSON cannot hold: {e}")

    def encode_v2(self, outputs: Arrays) -> Arrays:
        """The output tensors of a v2 response: one per declared output (every key returned
        when none is declared), a value without the rows dimension given one row."""
        response = self.encode(outputs)
        hook = "encode_response"
        if not isinstance(response, Mapping):
            self._wrong(hook, f"must return a dict of outputs for the v2 route, got {_kind(response)}")
        declared = type(self.handler).outputs
        if declared:
            names = [t.name for t in declared]
            if sorted(response) != sorted(names):
                self._wrong(hook, f"returned keys {sorted(map(str, response))}; the handler declares outputs {names}")
            specs = list(declared)
        else:
            specs = [TensorInfo(str(k), _guess_datatype(v), (-1,)) for k, v in response.items()]
        tensors: Arrays = {}
        for spec in specs:
            try:
                tensors[spec.name] = to_tensor(response[spec.name], spec)
            except ValueError as e:
                self._wrong(hook, f"returned output {spec.name!r} that does not fit {spec.to_dict()}: {e}")
        return tensors


def _as_server_fault(e: Exception) -> Exception:
    """A batch-level hook sees no single client: a HandlerInputError there is still the server's."""
    return RuntimeError(str(e)) if isinstance(e, HandlerInputError) else e


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        kinds = sorted({type(v).__name__ for v in value.values()})
        return f"a dict of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__


def _text(b: bytes) -> Any:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode("ascii")}  # TF Serving's form for binary


def to_json(value: Any) -> Any:
    """Plain JSON values from a handler's response; TypeError naming what is not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return _text(bytes(value))
    if isinstance(value, np.ndarray):
        if value.dtype == OBJECT or value.dtype.kind in "SU":
            return to_json(value.tolist())
        return value.tolist()
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with non-string keys")
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    raise TypeError(f"a value of type {type(value).__name__}")


def _guess_datatype(value: Any) -> str:
    arr = np.asarray(value)
    return BYTES if arr.dtype.kind in "OSU" else datatype_or(arr)


def to_tensor(value: Any, spec: TensorInfo) -> np.ndarray[Any, Any]:
    """A response value as the tensor `spec` declares: BYTES as an object array of bytes."""
    arr = np.asarray(value, dtype=OBJECT if spec.datatype == BYTES else None)
    if spec.datatype == BYTES:
        flat = [v.encode() if isinstance(v, str) else v for v in arr.reshape(-1).tolist()]
        if not all(isinstance(v, bytes) for v in flat):
            raise ValueError("BYTES values must be str or bytes")
        out = np.empty(len(flat), dtype=OBJECT)
        out[:] = flat
        arr = out.reshape(arr.shape)
    else:
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"expected numbers, got {arr.dtype}")
        dtype = DATATYPES[spec.datatype]
        if arr.dtype.kind == "f" and dtype.kind in "biu":
            raise ValueError("expected integers, got floats")
        arr = arr.astype(dtype)
    if arr.ndim == len(spec.shape) - 1:
        arr = arr[np.newaxis]  # one row: the value as it is for a request of one row
    if arr.ndim != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, arr.shape, strict=True)):
        raise ValueError(f"shape {list(arr.shape)}")
    return arr
