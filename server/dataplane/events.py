"""One answered request as its observers (traces, payload log) see it, whatever its protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from model_store.runtimes import Tensors

from ..protocol import InferRequest


@dataclass
class RequestEvent:
    """One answered request, for observers (traces, payload logs) after its reply is made."""

    model: str
    protocol: str  # "rest" | "grpc" | "v1" | "torchserve"
    status: int
    version: str  # the version that answered ("" if none)
    headers: Mapping[str, str]  # the request's (traceparent lives here)
    started_ns: int  # wall clock (time.time_ns) when the request arrived
    duration_s: float
    request: InferRequest | None = None  # decoded inputs, when decoding got that far
    outputs: Tensors | None = None
    error: str = ""
    queue_s: float = 0.0
    infer_s: float = 0.0
    batch_rows: int = 0


class RequestObserver(Protocol):
    """Sees every answered request; must not block (queue the work, drop when full)."""

    def __call__(self, event: RequestEvent) -> None: ...
