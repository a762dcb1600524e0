"""The infer route of one model in each HTTP process: limits, decode, submit to a worker, encode.

Transport-free: body chunks and headers in, a Reply out; the ASGI edge is a thin adapter over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import orjson

from model_store.runtimes import Tensors

from ..config import ModelConfig
from ..errors import ServingError, not_found, unavailable
from ..ipc.channels import OnAnswer, RequestChannel, ResponseChannels, WorkerLost
from ..ipc.messages import Outcome, Queued, Work
from ..metrics import metrics
from ..protocol import HEADER_LENGTH, InferRequest, decode_infer, decode_instances, encode_infer, is_count
from .encoding import decode_content
from .replies import Reply, error_reply

log = logging.getLogger(__name__)
VERSION_HEADER = "x-model-version"  # the body says it too; the header serves proxies and logs


@dataclass
class RequestEvent:
    """One answered request, for observers (traces, payload logs) after its reply is made."""

    model: str
    protocol: str  # "rest" | "grpc"
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


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # a cancelled wait drops its answer
        future.set_result(result)


class RequestObserver(Protocol):
    """Sees every answered request; must not block (queue the work, drop when full)."""

    def __call__(self, event: RequestEvent) -> None: ...


class InferHandler:
    """`POST /v2/models/<name>[/versions/<v> | /labels/<l>]/infer` for one model, in one HTTP process."""

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
        # The queue limit is per model; each HTTP process enforces its share without IPC.
        self.queue_limit = max(1, cfg.queue_limit() // api_servers)
        self.inflight = 0
        self._counters: dict[tuple[str, int], Any] = {}  # this process's metric children
        self._latency: Any = None
        # Every element takes at least one byte of body, so a shape with more elements than the
        # body limit is absurd whatever its data: refused before anything is allocated.
        self.max_elements = max(1, cfg.max_request_bytes)

    async def reply(
        self,
        chunks: bytes | AsyncIterator[bytes],
        headers: Mapping[str, str],
        version: str | None,
        label: str | None = None,
    ) -> Reply:
        """`start` for a body that may still be streaming in (the ASGI path)."""
        started, wall = time.perf_counter(), time.time_ns()
        if not isinstance(chunks, bytes):
            try:
                chunks = await self._read_body(chunks, headers.get("content-length"))
            except ServingError as e:
                return self._finish(error_reply(e), headers, started, wall, {"error": e.message})
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.start(chunks, headers, version, label, partial(_settle, future), started, wall)
        return await future

    def start(
        self,
        body: bytes,
        headers: Mapping[str, str],
        version: str | None,
        label: str | None,
        done: Callable[[Reply], None],
        started: float = 0.0,
        wall: int = 0,
    ) -> None:
        """Answer a request whose whole body is at hand: `done(reply)` is called exactly once,
        at once for a refusal, otherwise in the event-loop turn that reads the worker's answer
        (no task, no future: the HTTP protocol's fast path writes the reply from there)."""
        started, wall = started or time.perf_counter(), wall or time.time_ns()
        seen: dict[str, Any] = {}  # what the observers get to see of this request
        name = self.cfg.name
        try:
            if version is not None and (not is_count(version) or int(version) < 1):
                raise not_found(f"model {name!r} has no version {version!r}")
            self._check_room()
            body = self._whole_body(body, headers.get("content-length"))
            body = decode_content(body, headers.get("content-encoding"), self.cfg.max_request_bytes)
            req = seen["request"] = decode_infer(body, headers.get(HEADER_LENGTH), max_elements=self.max_elements)
            self._check_rows(req.rows)
        except ServingError as e:
            seen["error"] = e.message
            done(self._finish(error_reply(e), headers, started, wall, seen))
            return

        def answered(result: Outcome | Exception) -> None:
            self.inflight -= 1
            try:
                outcome = self._outcome(result)
                seen.update(queue_s=outcome.queue_s, infer_s=outcome.infer_s, batch_rows=outcome.batch_rows)
                seen["outputs"] = outcome.outputs
                if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
                    raise ServingError(outcome.status, outcome.error)
                content, extra = encode_infer(name, outcome.version, req, outcome.outputs)
                extra[VERSION_HEADER] = str(outcome.version)
                reply = Reply(200, content, extra, str(outcome.version))
            except ServingError as e:
                reply, seen["error"] = error_reply(e), e.message
            except Exception:
                log.exception("%s: answering a request failed", name)
                reply = error_reply(ServingError(500, "internal error while answering; see the server log"))
            done(self._finish(reply, headers, started, wall, seen))

        self.inflight += 1
        self._send(Work(req, int(version) if version else None, label, name), answered)

    def _finish(
        self, reply: Reply, headers: Mapping[str, str], started: float, wall: int, seen: dict[str, Any]
    ) -> Reply:
        """Count the reply in the metrics and show it to the observers."""
        key = (reply.version, reply.status)
        counter = self._counters.get(key)
        if counter is None:  # label lookups cost more than the increment: keep the children
            counter = self._counters[key] = metrics().requests.labels(self.cfg.name, reply.version, str(reply.status))
            self._latency = self._latency or metrics().latency.labels(self.cfg.name)
        counter.inc()
        took = time.perf_counter() - started
        self._latency.observe(took)
        if self.observers:
            self.notify(RequestEvent(self.cfg.name, "rest", reply.status, reply.version, headers, wall, took, **seen))
        return reply

    def notify(self, event: RequestEvent) -> None:
        for observe in self.observers:
            try:
                observe(event)
            except Exception:  # an observer's failure never fails a request
                log.exception("%s: request observer failed", self.cfg.name)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Counts a request against this process's share of the model's queue limit (503 past it)."""
        self._check_room()
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def infer(
        self,
        req: InferRequest,
        version: int | None = None,
        label: str | None = None,
        seen: dict[str, Any] | None = None,
    ) -> tuple[int, Tensors]:
        """Decoded tensors in, the answering version and its outputs out; any refusal is a
        ServingError. Shared by every protocol (call it inside `admitted`)."""
        self._check_rows(req.rows)
        outcome = await self._submit(Work(req, version, label, self.cfg.name))
        if seen is not None:  # timings and outputs for the observers
            seen.update(queue_s=outcome.queue_s, infer_s=outcome.infer_s, batch_rows=outcome.batch_rows)
            seen["outputs"] = outcome.outputs
        if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
            raise ServingError(outcome.status, outcome.error)
        return outcome.version, outcome.outputs

    def _check_room(self) -> None:
        if self.inflight >= self.queue_limit:
            raise unavailable(f"model {self.cfg.name!r} is overloaded; retry shortly", retry_after_s=1)

    def _check_rows(self, rows: int) -> None:
        if rows > self.cfg.max_rows_per_request:
            raise ServingError(413, f"request has {rows} rows, over the limit of {self.cfg.max_rows_per_request}")

    async def reply_v1(self, chunks: bytes | AsyncIterator[bytes], headers: Mapping[str, str]) -> Reply:
        """`POST /v1/models/<name>:predict`: `{"instances": [...]}` -> `{"predictions": [...]}`
        (KServe v1 / TF Serving REST); each instance is one row, batched like any request."""
        started, wall = time.perf_counter(), time.time_ns()
        try:
            with self.admitted():
                body = await self._read_body(chunks, headers.get("content-length"))
                body = decode_content(body, headers.get("content-encoding"), self.cfg.max_request_bytes)
                instances = decode_instances(body)
                if len(instances) > self.cfg.max_rows_per_request:
                    raise ServingError(
                        413, f"{len(instances)} instances, over the limit of {self.cfg.max_rows_per_request}"
                    )
                outcome = await self._submit(
                    Work(InferRequest({}, rows=len(instances)), None, None, self.cfg.name, instances)
                )
                if outcome.status != 200 or outcome.version is None:
                    raise ServingError(outcome.status, outcome.error)
                content = orjson.dumps({"predictions": outcome.payload}, option=orjson.OPT_SERIALIZE_NUMPY)
                reply = Reply(
                    200,
                    content,
                    {"content-type": "application/json", VERSION_HEADER: str(outcome.version)},
                    str(outcome.version),
                )
        except ServingError as e:
            reply = error_reply(e)
        if self.observers:
            self.notify(
                RequestEvent(
                    self.cfg.name, "v1", reply.status, reply.version, headers, wall, time.perf_counter() - started
                )
            )
        return reply

    def _check_declared(self, declared: str | None) -> int:
        """413 for a declared length over the limit, before any byte is read; the limit."""
        limit = self.cfg.max_request_bytes
        if declared is not None and is_count(declared) and int(declared) > limit:
            raise ServingError(413, f"request body of {declared} bytes is over the limit of {limit}")
        return limit

    def _whole_body(self, body: bytes, declared: str | None) -> bytes:
        limit = self._check_declared(declared)
        if len(body) > limit:
            raise ServingError(413, f"request body is over the limit of {limit} bytes")
        return body

    async def _read_body(self, chunks: bytes | AsyncIterator[bytes], declared: str | None) -> bytes:
        """The body, whole at hand or as it streams in, within the limit (413 past it)."""
        if isinstance(chunks, bytes):
            return self._whole_body(chunks, declared)
        limit = self._check_declared(declared)
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ServingError(413, f"request body is over the limit of {limit} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _send(self, work: Work, call: OnAnswer) -> None:
        """Put `work` on the model's channel; `call` gets the worker's answer (or why none)."""
        consumer = self._consumer
        if consumer is None:  # known once this process serves; looked up once, not per request
            consumer = self._consumer = self.process_index()
            self.responses.start_reading(consumer)
        uid = self.responses.new_uid()
        self.responses.on_answer(uid, self.channel, self.cfg.inference_timeout_s, call)
        self.requests.put(Queued(consumer, uid, time.monotonic(), work))

    def _outcome(self, result: Outcome | Exception) -> Outcome:
        if isinstance(result, TimeoutError):
            return Outcome(504, error=f"inference took longer than {self.cfg.inference_timeout_s:g}s")
        if isinstance(result, WorkerLost):
            return Outcome(503, error="the worker holding this request stopped and was restarted; retry")
        if isinstance(result, Exception):
            raise result
        return result

    async def _submit(self, work: Work) -> Outcome:
        """`_send` awaited (gRPC, v1)."""
        future: asyncio.Future[Outcome | Exception] = asyncio.get_running_loop().create_future()
        self._send(work, partial(_settle, future))
        return self._outcome(await future)
