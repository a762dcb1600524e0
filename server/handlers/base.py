"""The handler a user writes: their own pre- and post-processing around a stored model.

LitServe's LitAPI shape, minus `predict`: the prediction stays the server's (the store's artifact,
batched across requests, hot-reloaded), so a handler turns a request into the model's input
tensors and the model's output tensors into a response, and never loads weights itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_store.manifest import Manifest
from model_store.signature import DATATYPES

BYTES = "BYTES"
Arrays = dict[str, np.ndarray[Any, Any]]


class HandlerInputError(Exception):
    """The request is the client's fault (not an image, a missing field): answered 400 with this
    message. Any other exception a handler raises is the server's fault: 500 naming the handler."""


class HandlerSetupError(Exception):
    """A version the handler cannot serve (its data file is missing or malformed): the version is
    rejected with this reason and the one serving keeps serving."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the handler's declared signature, as the model's metadata shows it.

    `datatype` is an Open Inference Protocol datatype, BYTES included; `shape` uses -1 for a
    dynamic dimension, the first being the rows of a request.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        if self.datatype != BYTES and self.datatype not in DATATYPES:
            raise ValueError(f"tensor {self.name!r}: datatype {self.datatype!r} is not one of {[*DATATYPES, BYTES]}")
        shape = tuple(self.shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise ValueError(f"tensor {self.name!r}: shape must be a non-empty list of ints >= -1, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Handler:
    """Subclass this, name it in the server config (`handler: mypkg.handlers:MyHandler`).

    One instance is made per loaded version and set up with that version's manifest and folder,
    so a new version with new labels answers with its own labels after the swap, never mixed
    within a batch. Methods run in the server's processes, several requests at a time: keep
    per-request state in local variables, not on `self`.

    The request `decode_request` receives depends on the route:

    - `POST /v1/models/{name}:predict` (KServe v1 / TF Serving REST, `{"instances": [...]}`):
      one instance, a JSON value (dict, list, str, number). Binary data travels base64-encoded,
      by TF Serving's convention as `{"b64": "..."}`.
    - `POST /v2/models/{name}/infer` (Open Inference Protocol): the decoded
      `server.protocol.InferRequest`; `request.inputs` maps input names to numpy arrays, BYTES
      inputs as numpy object arrays of `bytes` (JSON strings arrive UTF-8 encoded), and
      `request.rows` is the first dimension they share.

    `isinstance(request, InferRequest)` tells them apart.
    """

    inputs: ClassVar[tuple[TensorInfo, ...]] = ()
    """What a v2 client sends (shown in the model's metadata instead of the raw signature)."""
    outputs: ClassVar[tuple[TensorInfo, ...]] = ()
    """What a v2 client gets: the keys of the dict `encode_response` returns."""

    def setup(self, manifest: Manifest, folder: Path) -> None:
        """Read what the version carries (`self.data_file(manifest, folder, "labels.json")`).

        Raising here rejects this version with the exception's message as the reason; the
        version serving before keeps serving.
        """

    def decode_request(self, request: Any) -> Arrays:
        """One request -> the model's input tensors (its raw signature: names, datatypes), each
        with a leading dimension of the rows this request makes (usually 1).

        Raise `HandlerInputError` for input the client got wrong.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement decode_request")

    def batch(self, inputs: list[Arrays]) -> Arrays:
        """The decoded requests of one batch -> one set of tensors. The default concatenates along
        the first dimension; override to pad (e.g. token sequences of different lengths)."""
        return {name: np.concatenate([one[name] for one in inputs]) for name in inputs[0]}

    def unbatch(self, outputs: Arrays, rows: list[int]) -> list[Arrays]:
        """The batch's output tensors -> each request's share (`rows[i]` rows for request i)."""
        cuts = np.cumsum(rows)[:-1]
        parts = {name: np.split(arr, cuts) for name, arr in outputs.items()}
        return [{name: parts[name][i] for name in outputs} for i in range(len(rows))]

    def encode_response(self, outputs: Arrays) -> Any:
        """One request's rows of the model's output tensors -> its response.

        Return a dict keyed by the declared `outputs` names (values: numbers, strings, lists or
        numpy arrays, with or without the leading rows dimension) and both routes can use it: v1
        answers it as that request's prediction (JSON), v2 as one output tensor per key. A
        handler serving v1 only may return any JSON-able value.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement encode_response")

    def encode_torchserve(self, outputs: Arrays) -> Any:
        """One request's response on TorchServe's `POST /predictions/{model}` (what a ported
        handler's `postprocess` gave for its row). The default is `encode_response`'s."""
        return self.encode_response(outputs)

    @staticmethod
    def data_file(manifest: Manifest, folder: Path, name: str) -> Path:
        """The path of a data file the version was published with (`publish(data_files=...)`);
        `HandlerSetupError` naming the file when this version lacks it."""
        entry = manifest.data_file(name)
        if entry is None:
            have = [f.path for f in manifest.data_files]
            raise HandlerSetupError(
                f"{manifest.name}:{manifest.version} has no data file {name!r} "
                f"(it has {have or 'none'}; publish a version with data_files={{{name!r}: ...}})"
            )
        return folder / entry.path
