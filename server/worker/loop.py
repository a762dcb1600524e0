"""The worker's batch loop: collect requests into row batches, answer each request on its own.

LitServe's own batched loop polls its queue every millisecond (and spins at batch_timeout=0),
counts requests rather than rows, and fails a whole batch when one request fails. This loop
blocks while idle, dispatches at once when nothing else is queued, packs whole requests up to
`max_batch_size` rows, and answers each request on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from queue import Empty
from typing import Any, Protocol

import numpy as np

from model_store.runtimes import Tensors

from ..ipc.messages import Answer, Outcome, Queued, Work
from ..protocol import InferRequest, check_inputs
from .handled import run_handled
from .loader import Servable
from .rows import run_chunked, split, stack

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5  # how long an idle worker blocks before looking for a version to swap in


class Requests(Protocol):
    """Where a worker takes requests from (a `RequestChannel`, or a fake in tests)."""

    def get(self, block: bool = True, timeout: float | None = None) -> Queued: ...

    def cancelled(self, consumer: int, uid: int) -> bool: ...


class Answers(Protocol):
    """Where a worker sends answers (`ResponseChannels`, or a fake in tests)."""

    def send(self, consumer: int, writer: tuple[str, int], answers: list[Answer]) -> None: ...


def run_batch(
    targets: Sequence[Servable | Outcome],
    works: Sequence[Work],
    max_rows: int,
    seconds: dict[int, float] | None = None,
) -> list[Outcome]:
    """Answer every request of a batch, each with the servable resolved for it (or the answer
    saying why none); a bad or failing request never fails the others. Requests for one version
    run as one batch; `seconds` receives each version's compute time."""
    outcomes: list[Outcome | None] = [None] * len(works)
    groups: dict[int, tuple[Servable, list[int]]] = {}
    for i, (target, w) in enumerate(zip(targets, works, strict=True)):
        if isinstance(target, Outcome):
            outcomes[i] = target
        elif (
            target.handler is None
            and w.instances is None
            and (problem := check_inputs(target.manifest.signature, w.request))
        ):
            outcomes[i] = Outcome(400, error=problem)
        else:
            groups.setdefault(id(target), (target, []))[1].append(i)
    for servable, indexes in groups.values():
        started = time.perf_counter()
        handled = servable.handler is not None or any(works[i].instances is not None for i in indexes)
        if handled:
            results = run_handled(servable, [works[i] for i in indexes], max_rows)
        else:
            results = _predict_rows(servable, [works[i].request for i in indexes], max_rows)
        if seconds is not None:
            seconds[servable.version] = time.perf_counter() - started
        for i, result in zip(indexes, results, strict=True):
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
    merged = run_chunked(predict, stack([r.inputs for r in requests]), max_rows)
    return split(merged, [r.rows for r in requests])


CLIENT_GONE = "client_gone"  # the reasons a request is dropped unrun (a metric label)
DEADLINE = "deadline"


class BatchCollector:
    """Takes whole requests off a channel into batches of at most `max_rows` rows. A request
    whose client is gone (a cancel read) or whose deadline has passed never reaches a batch:
    it lands in `dropped` with its answer, for the caller to send and count."""

    def __init__(self, requests: Requests, max_rows: int, wait_s: float) -> None:
        self.requests, self.max_rows, self.wait_s = requests, max_rows, wait_s
        self._held: Queued | None = None
        self.dropped: list[tuple[Queued, str, Outcome]] = []
        self.idle_wait_s = IDLE_WAIT_S  # shorter while a model loads on demand (its requests wait)

    def _get(self, timeout: float | None, block: bool = True) -> Queued | None:
        while True:
            try:
                item = self.requests.get(block=block, timeout=timeout)
            except Empty:
                return None
            why = self.dead(item)
            if why is None:
                return item
            self.dropped.append((item, *why))

    def dead(self, item: Queued) -> tuple[str, Outcome] | None:
        """Why a request is not to be run (its client left, its deadline passed), or None."""
        gone = self.requests.cancelled(item.consumer, item.uid)
        deadline = item.work.deadline
        if deadline and time.monotonic() >= deadline:  # a call past its deadline is cancelled too
            return DEADLINE, Outcome(504, error="the request's deadline passed while it was queued")
        if gone:
            return CLIENT_GONE, Outcome(499, error="the client cancelled the request or disconnected")
        return None

    def collect(self) -> list[Queued]:
        held, self._held = self._held, None
        if held is not None and (why := self.dead(held)) is not None:  # cancelled while held
            self.dropped.append((held, *why))
            held = None
        first = held or self._get(self.idle_wait_s)  # blocks: no idle spin
        if first is None:
            return []
        items, rows = [first], first.work.request.rows
        deadline = time.monotonic() + self.wait_s
        while rows < self.max_rows:
            remaining = deadline - time.monotonic()
            item = self._get(remaining if remaining > 0 else None, block=remaining > 0)
            if item is None:
                break  # nothing else queued: dispatch now rather than wait out a window
            if rows + item.work.request.rows > self.max_rows:
                self._held = item  # starts the next batch; whole requests only
                break
            items.append(item)
            rows += item.work.request.rows
        return items


def answer(items: Sequence[Queued], outcomes: Sequence[Outcome], answers: Answers, writer: tuple[str, int]) -> None:
    """One message per HTTP process for the whole batch: fewer pickles, writes and wakeups."""
    by_consumer: dict[int, list[Answer]] = {}
    for item, outcome in zip(items, outcomes, strict=True):
        by_consumer.setdefault(item.consumer, []).append((item.uid, outcome))
    for consumer, batch in by_consumer.items():
        answers.send(consumer, writer, batch)
