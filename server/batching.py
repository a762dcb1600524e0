"""Row batching: the worker's loop and the batch execution, inside LitServe's worker process.

LitServe's own batched loop polls its queue every millisecond (and spins at batch_timeout=0),
counts requests rather than rows, and fails a whole batch when one request fails. This loop
blocks while idle, dispatches at once when nothing else is queued, packs whole requests up to
`max_batch_size` rows, and answers each request on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Queue
from typing import Any

import numpy as np
from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from model_store.runtimes import Tensors

from .loader import Servable
from .protocol import InferRequest, check_inputs

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5  # how long an idle worker blocks before looking for a version to swap in


@dataclass
class Work:
    """One request as it crosses the queue: decoded tensors and the version asked for, if any."""

    request: InferRequest
    version: int | None = None


@dataclass
class Outcome:
    """One request's answer as it crosses back: outputs, or an HTTP status and message."""

    status: int
    version: int | None = None
    outputs: Tensors | None = None
    error: str = ""


def run_batch(
    servable: Servable | None, name: str, works: Sequence[Work], max_rows: int, why_not: str
) -> list[Outcome]:
    """Answer every request of a batch; a bad or failing request never fails the others."""
    outcomes: list[Outcome | None] = [None] * len(works)
    runnable: list[int] = []
    for i, w in enumerate(works):
        if servable is None:
            outcomes[i] = Outcome(503, error=f"model {name!r} has no ready version: {why_not}")
        elif w.version is not None and w.version != servable.version:
            outcomes[i] = Outcome(
                404,
                error=f"version {w.version} of model {name!r} is not loaded (serving {servable.version})",
            )
        elif problem := check_inputs(servable.manifest.signature, w.request):
            outcomes[i] = Outcome(400, error=problem)
        else:
            runnable.append(i)
    if runnable and servable is not None:
        results = _predict_rows(servable, [works[i].request for i in runnable], max_rows)
        for i, result in zip(runnable, results, strict=True):
            outcomes[i] = result
    return [o for o in outcomes if o is not None]


def _predict_rows(servable: Servable, requests: list[InferRequest], max_rows: int) -> list[Outcome]:
    try:
        outputs = _concat_predict(servable.predict, requests, max_rows)
    except Exception:
        if len(requests) == 1:
            log.exception("%s:%s failed on a valid request", servable.name, servable.version)
            return [
                Outcome(
                    500,
                    error=f"model {servable.name!r} version {servable.version} failed on this input",
                )
            ]
        # Find the request that breaks the model; the others still get their answer.
        return [o for r in requests for o in _predict_rows(servable, [r], max_rows)]
    return [Outcome(200, servable.version, o) for o in outputs]


def _concat_predict(
    predict: Callable[[dict[str, np.ndarray[Any, Any]]], Tensors],
    requests: list[InferRequest],
    max_rows: int,
) -> list[Tensors]:
    """Stack requests into one input per name, run in chunks of at most `max_rows`, split back."""
    names = list(requests[0].inputs)
    stacked = {
        n: np.concatenate([r.inputs[n] for r in requests]) if len(requests) > 1 else requests[0].inputs[n]
        for n in names
    }
    total = next(iter(stacked.values())).shape[0]
    chunks = [predict({n: a[s : s + max_rows] for n, a in stacked.items()}) for s in range(0, total, max_rows)]
    merged = {k: np.concatenate([c[k] for c in chunks]) if len(chunks) > 1 else chunks[0][k] for k in chunks[0]}
    out, start = [], 0
    for r in requests:
        out.append({k: v[start : start + r.rows] for k, v in merged.items()})
        start += r.rows
    return out


class RowBatchLoop(LitLoop):  # type: ignore[misc]
    """The worker loop LitServe runs for each model's LitAPI."""

    def __init__(self) -> None:
        super().__init__()
        self._held: tuple[Any, ...] | None = None

    def _collect(self, queue: Queue[Any], max_rows: int, wait_s: float) -> list[tuple[Any, ...]]:
        first = self._held or self.get_request(queue, timeout=IDLE_WAIT_S)  # blocks: no idle spin
        self._held = None
        if first is None:
            return []
        items, rows = [first], first[3].request.rows
        deadline = time.monotonic() + wait_s
        while rows < max_rows:
            remaining = deadline - time.monotonic()
            item = self.get_request(queue, block=remaining > 0, timeout=remaining if remaining > 0 else None)
            if item is None:
                break  # nothing else queued: dispatch now rather than wait out a window
            if rows + item[3].request.rows > max_rows:
                self._held = item  # starts the next batch; whole requests only
                break
            items.append(item)
            rows += item[3].request.rows
        return items

    def run(self, lit_api: Any, device: Any, worker_id: int, request_queue: Any, transport: Any, *_: Any) -> None:
        items = self._collect(request_queue, lit_api.max_batch_size, lit_api.batch_timeout)
        lit_api.manager.swap_if_ready()  # between batches: a batch never mixes versions
        if not items:
            return
        outcomes = lit_api.handle([item[3] for item in items], [item[2] for item in items])
        # One message per HTTP process for the whole batch: fewer pickles, writes and wakeups.
        by_consumer: dict[int, list[Any]] = {}
        for (consumer, uid, _, _), outcome in zip(items, outcomes, strict=True):
            by_consumer.setdefault(consumer, []).append(
                (uid, (outcome, LitAPIStatus.OK, LoopResponseType.REGULAR, worker_id))
            )
        for consumer, answers in by_consumer.items():
            transport.send_many(answers, consumer, (lit_api.cfg.name, worker_id))
