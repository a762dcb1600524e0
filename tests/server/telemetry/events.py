"""RequestEvents as an InferHandler makes them, for the observers' unit tests."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from server.dataplane.events import RequestEvent
from server.protocol import InferRequest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def event(status: int = 200, headers: dict[str, str] | None = None, rows: int = 2, **kw: Any) -> RequestEvent:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    fields: dict[str, Any] = {
        "request": InferRequest({"input": x}, id="req-7", rows=rows),
        "outputs": {"output": (x[:, :3] * 2).astype(np.float32)} if status == 200 else None,
        "queue_s": 0.002,
        "infer_s": 0.001,
        "batch_rows": 8,
        "error": "" if status == 200 else "something went wrong",
    }
    fields.update(kw)
    return RequestEvent(
        "tiny", "rest", status, "2" if status == 200 else "", headers or {}, time.time_ns(), 0.004, **fields
    )
