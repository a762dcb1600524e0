"""The payload log: a sample of requests (and their responses) as JSON lines, for audit and debugging.

The request path only samples and enqueues (a bounded queue, bounded in tensor bytes too): when
the writer falls behind, a record is dropped and counted in `modeldock_payload_log_dropped_total`,
never waited for. A writer thread, started on first use in the process that logs (LitServe forks
the HTTP processes after the observer is made), hashes or serialises the tensors and writes.

A line, with `payload_log_tensors: sha256` (the default):

    {"time": "...Z", "model": "m", "version": "2", "protocol": "rest", "status": 200, "id": "r1",
     "trace_id": "4bf9...", "duration_s": ..., "queue_s": ..., "infer_s": ..., "batch_rows": 4,
     "error": "", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "sha256": "..."}],
     "outputs": [...]}

`sha256` is over the tensor's little-endian row-major bytes, as the binary tensor extension sends
them (BYTES: each element as a 4-byte length and its bytes); `inline` writes `data` as a flat list
(BYTES elements as UTF-8 text; NaN and infinities as null).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import struct
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import orjson
from prometheus_client import Counter

from model_store.runtimes import Tensors

from ..dataplane.events import RequestEvent
from ..protocol import datatype_name
from .logfile import Sink, open_sink
from .process import at_process_exit

log = logging.getLogger(__name__)
TensorMode = Literal["sha256", "inline"]
DROP_REASONS = ("queue_full", "too_large", "write_error")
_LENGTH = struct.Struct("<I")
_BATCH = 256  # records per write
_JSON = orjson.OPT_SERIALIZE_NUMPY
_STOP = None  # the writer's sentinel


class _Counters:
    """Made on first use in the process that counts (after metrics.setup_multiprocess chose the
    value storage), like server.metrics; every reason starts at 0 so a rate query works at once."""

    def __init__(self) -> None:
        dropped = Counter(
            "modeldock_payload_log_dropped_total",
            "Payload log records dropped: queue_full (the writer fell behind), too_large, write_error",
            ["reason"],
        )
        self.dropped = {reason: dropped.labels(reason) for reason in DROP_REASONS}
        self.written = Counter("modeldock_payload_log_records_total", "Payload log records written")


_counters: _Counters | None = None


def counters() -> _Counters:
    global _counters
    if _counters is None:
        _counters = _Counters()
    return _counters


class PayloadLog:
    """A RequestObserver writing a sample of answered requests to `destination` (`stdout` or a file)."""

    def __init__(
        self,
        destination: str,
        sample: float = 1.0,
        responses: bool = True,
        tensors: TensorMode = "sha256",
        max_bytes: int = 256 << 20,
        queue_size: int = 1024,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self.destination, self.sample, self.responses, self.tensors = destination, sample, responses, tensors
        self.max_bytes, self.queue_size, self.max_pending_bytes = max_bytes, queue_size, max_pending_bytes
        self._pid = 0
        self._queue: queue.Queue[tuple[RequestEvent, int] | None] = queue.Queue(queue_size)
        self._pending = 0  # tensor bytes held by queued records
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sink: Sink | None = None
        self._warned = 0.0

    def __call__(self, event: RequestEvent) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        if self._pid != os.getpid():
            self._start()
        size = _nbytes(event.request.inputs if event.request else None)
        if self.responses:
            size += _nbytes(event.outputs)
        with self._lock:
            if self._pending + size > self.max_pending_bytes and self._pending > 0:
                self._drop("queue_full")
                return
            try:
                self._queue.put_nowait((event, size))
            except queue.Full:
                self._drop("queue_full")
                return
            self._pending += size

    def _drop(self, reason: str) -> None:
        counters().dropped[reason].inc()

    def _start(self) -> None:
        """This process's queue, sink and writer thread (what the supervisor made stays there)."""
        self._queue = queue.Queue(self.queue_size)
        self._pending = 0
        self._lock = threading.Lock()
        self._sink = open_sink(self.destination, self.max_bytes)
        counters()
        self._thread = threading.Thread(target=self._write_loop, name="payload-log", daemon=True)
        self._pid = os.getpid()
        self._thread.start()
        at_process_exit(self.close)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the writer (at exit; tests)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._queue.put(_STOP)  # blocking: at close, waiting for room is right
        thread.join(timeout_s)
        self._thread = None
        if self._sink is not None:
            self._sink.close()

    def _write_loop(self) -> None:
        while True:
            batch: list[tuple[RequestEvent, int]] = []
            item = self._queue.get()
            while item is not _STOP:
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            if item is _STOP:
                return

    def _write(self, batch: list[tuple[RequestEvent, int]]) -> None:
        try:
            self._render_and_write([event for event, _ in batch])
        except Exception:  # the writer thread must outlive any one batch
            for _ in batch:
                self._drop("write_error")
            self._warn("payload log: a batch could not be written", exc=True)
        finally:
            with self._lock:
                self._pending -= sum(size for _, size in batch)

    def _render_and_write(self, events: list[RequestEvent]) -> None:
        assert self._sink is not None
        limit, lines = self._sink.limit, []
        for event in events:
            line = orjson.dumps(self.record(event), option=_JSON) + b"\n"
            if limit is not None and len(line) > limit:  # it would break the file's cap
                self._drop("too_large")
            else:
                lines.append(line)
        if not lines:
            return
        try:
            self._sink.write(lines)
        except OSError as e:  # disk full, a reader gone: the server keeps serving
            for _ in lines:
                self._drop("write_error")
            self._warn(f"payload log {self.destination}: {e}")
            return
        counters().written.inc(len(lines))

    def _warn(self, message: str, exc: bool = False) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning(message, exc_info=exc)

    def record(self, event: RequestEvent) -> dict[str, Any]:
        """The JSON object of one request (in the writer thread)."""
        req = event.request
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.started_ns / 1e9, timezone.utc).isoformat(timespec="microseconds"),
            "model": event.model,
            "version": event.version,
            "protocol": event.protocol,
            "status": event.status,
            "id": req.id if req else None,
            "trace_id": trace_id(event.headers),
            "duration_s": round(event.duration_s, 6),
            "queue_s": round(event.queue_s, 6),
            "infer_s": round(event.infer_s, 6),
            "batch_rows": event.batch_rows,
            "error": event.error,
            "inputs": self._tensors(req.inputs) if req else None,
        }
        if self.responses:
            doc["outputs"] = self._tensors(event.outputs) if event.outputs is not None else None
        return doc

    def _tensors(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
        out = []
        for name, arr in tensors.items():
            entry: dict[str, Any] = {"name": name, "datatype": datatype_name(arr), "shape": list(arr.shape)}
            if self.tensors == "sha256":
                entry["sha256"] = tensor_sha256(arr)
            else:
                entry["data"] = _inline(arr)
            out.append(entry)
        return out


def _nbytes(tensors: Tensors | None) -> int:
    return sum(a.nbytes for a in tensors.values()) if tensors else 0


def tensor_sha256(arr: np.ndarray[Any, Any]) -> str:
    """Over the bytes the binary tensor extension would carry for this tensor."""
    h = hashlib.sha256()
    if arr.dtype == object:
        for item in arr.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            h.update(_LENGTH.pack(len(raw)))
            h.update(raw)
    else:
        h.update(np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).data)
    return h.hexdigest()


def _inline(arr: np.ndarray[Any, Any]) -> Any:
    flat = arr.reshape(-1)
    if arr.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    if arr.dtype.kind == "f":  # orjson writes NaN and infinities as null: say so in the docs
        return np.ascontiguousarray(flat, np.float64 if arr.dtype.itemsize > 4 else np.float32)
    return np.ascontiguousarray(flat).tolist() if arr.dtype.kind == "b" else np.ascontiguousarray(flat)


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The W3C trace id of the request's `traceparent`, if it carries a valid one."""
    parts = headers.get("traceparent", "").split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None
