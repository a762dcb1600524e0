"""One model's inference in a submitting process (an HTTP process, the gRPC process): the queue
share, the row limit, the submit to the model's workers and the cancel of a request whose client
is gone. Protocol codecs decode into an `InferRequest` before and encode the outputs after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from model_store.runtimes import Tensors

from ..config import ModelConfig
from ..errors import ServingError, refused, unavailable
from ..ipc.channels import OnAnswer, RequestChannel, ResponseChannels, WorkerLost
from ..ipc.messages import Outcome, Queued, Work
from ..protocol import InferRequest
from .events import RequestEvent, RequestObserver

log = logging.getLogger(__name__)


def settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # a cancelled wait drops its answer
        future.set_result(result)


class ModelEndpoint:
    """Submits one model's requests to its workers (or the pool's) and maps their answers."""

    def __init__(
        self,
        cfg: ModelConfig,
        api_servers: int,
        requests: RequestChannel,
        responses: ResponseChannels,
        process_index: Callable[[], int],
        observers: Sequence[RequestObserver] = (),
        channel: str = "",
    ) -> None:
        self.cfg = cfg
        self.channel = channel or cfg.name  # the workers' name: the model's own, or the pool's
        self._consumer: int | None = None
        self.observers = list(observers)
        self.requests, self.responses, self.process_index = requests, responses, process_index
        # The queue limit is per model; each submitting process enforces its share without IPC.
        self.queue_limit = max(1, cfg.queue_limit() // api_servers)
        self.inflight = 0
        # Every element takes at least one byte of body, so a shape with more elements than the
        # body limit is absurd whatever its data: refused before anything is allocated.
        self.max_elements = max(1, cfg.max_request_bytes)

    # ---- admission -----------------------------------------------------------------------------
    def check_room(self) -> None:
        if self.inflight >= self.queue_limit:
            raise unavailable(f"model {self.cfg.name!r} is overloaded; retry shortly", retry_after_s=1)

    def check_rows(self, rows: int) -> None:
        if rows > self.cfg.max_rows_per_request:
            raise ServingError(413, f"request has {rows} rows, over the limit of {self.cfg.max_rows_per_request}")

    def check_size(self, size: int) -> None:
        limit = self.cfg.max_request_bytes
        if size > limit:
            raise ServingError(413, f"request of {size} bytes is over the limit of {limit}")

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Counts a request against this process's share of the model's queue limit (503 past it)."""
        self.check_room()
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    # ---- submit and answer ---------------------------------------------------------------------
    async def infer(
        self,
        req: InferRequest,
        version: int | None = None,
        label: str | None = None,
        seen: dict[str, Any] | None = None,
        deadline_s: float | None = None,
    ) -> tuple[int, Tensors]:
        """Decoded tensors in, the answering version and its outputs out; any refusal is a
        ServingError. A request whose caller is cancelled (its client left, its deadline passed)
        is cancelled in the workers' queue too. Call it inside `admitted`."""
        self.check_rows(req.rows)
        outcome = await self.submit(Work(req, version, label, self.cfg.name), deadline_s)
        if seen is not None:  # timings and outputs for the observers
            seen.update(queue_s=outcome.queue_s, infer_s=outcome.infer_s, batch_rows=outcome.batch_rows)
            seen["outputs"] = outcome.outputs
        if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
            raise refused(outcome.status, outcome.error, outcome.retry_after_s)
        return outcome.version, outcome.outputs

    async def submit(self, work: Work, deadline_s: float | None = None) -> Outcome:
        """`send` awaited; cancelling the wait cancels the request."""
        future: asyncio.Future[Outcome | Exception] = asyncio.get_running_loop().create_future()
        uid = self.send(work, partial(settle, future), deadline_s)
        try:
            return self.outcome(await future)
        except asyncio.CancelledError:
            self.cancel(uid)
            raise

    def send(self, work: Work, call: OnAnswer, deadline_s: float | None = None) -> int:
        """Put `work` on the model's channel; `call` gets the worker's answer (or why none).
        `deadline_s`: how long the caller still waits; past it the workers drop the request
        unrun. Returns the request's id, for `cancel`."""
        consumer = self._consumer
        if consumer is None:  # known once this process serves; looked up once, not per request
            consumer = self._consumer = self.process_index()
            self.responses.start_reading(consumer)
        uid = self.responses.new_uid()
        self.responses.on_answer(uid, self.channel, self.cfg.inference_timeout_s, call)
        now = time.monotonic()
        # CLOCK_MONOTONIC is one clock for every process of the machine: the worker compares it.
        work.deadline = now + deadline_s if deadline_s is not None else 0.0
        self.requests.put(Queued(consumer, uid, now, work))
        return uid

    def cancel(self, uid: int) -> None:
        """The client of request `uid` is gone: its workers drop it if it has not run yet."""
        assert self._consumer is not None
        self.requests.cancel(self._consumer, uid)

    def outcome(self, result: Outcome | Exception) -> Outcome:
        if isinstance(result, TimeoutError):
            return Outcome(504, error=f"inference took longer than {self.cfg.inference_timeout_s:g}s")
        if isinstance(result, WorkerLost):
            return Outcome(503, error="the worker holding this request stopped and was restarted; retry")
        if isinstance(result, Exception):
            raise result
        return result

    # ---- observers -----------------------------------------------------------------------------
    def notify(self, event: RequestEvent) -> None:
        for observe in self.observers:
            try:
                observe(event)
            except Exception:  # an observer's failure never fails a request
                log.exception("%s: request observer failed", self.cfg.name)
