"""The infer route of one model in each HTTP process: REST's decode and encode around the data
plane's submit (`dataplane.endpoint`).

Transport-free: body chunks and headers in, a Reply out; the ASGI edge is a thin adapter over it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

import orjson

from ..dataplane.endpoint import ModelEndpoint, settle
from ..dataplane.events import RequestEvent
from ..errors import ServingError, not_found, refused
from ..ipc.messages import Outcome, Work
from ..metrics import metrics
from ..protocol import HEADER_LENGTH, InferRequest, decode_infer, decode_instances, encode_infer, is_count
from .encoding import decode_content
from .replies import Reply, error_reply

log = logging.getLogger(__name__)
VERSION_HEADER = "x-model-version"  # the body says it too; the header serves proxies and logs
COLD_START_HEADER = "x-model-cold-start-ms"  # waited for the model to load (memory_budget)


class InferHandler(ModelEndpoint):
    """`POST /v2/models/<name>[/versions/<v> | /labels/<l>]/infer` for one model, in one HTTP
    process: REST's codec (JSON and binary tensors, the v1 `instances` form) over the data
    plane's `ModelEndpoint`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counters: dict[tuple[str, int], Any] = {}  # this process's metric children
        self._latency: Any = None

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
        uid = self.start(chunks, headers, version, label, partial(settle, future), started, wall)
        try:
            return await future
        except asyncio.CancelledError:  # the client left (http/edge.py): its workers drop it
            if uid is not None:
                self.cancel(uid)
            raise

    def start(
        self,
        body: bytes,
        headers: Mapping[str, str],
        version: str | None,
        label: str | None,
        done: Callable[[Reply], None],
        started: float = 0.0,
        wall: int = 0,
    ) -> int | None:
        """Answer a request whose whole body is at hand: `done(reply)` is called exactly once,
        at once for a refusal, otherwise in the event-loop turn that reads the worker's answer
        (no task, no future: the HTTP protocol's fast path writes the reply from there).
        Returns the request's id while it is with the workers (for `cancel`), else None."""
        started, wall = started or time.perf_counter(), wall or time.time_ns()
        seen: dict[str, Any] = {}  # what the observers get to see of this request
        name = self.cfg.name
        try:
            if version is not None and (not is_count(version) or int(version) < 1):
                raise not_found(f"model {name!r} has no version {version!r}")
            self.check_room()
            body = self._whole_body(body, headers.get("content-length"))
            body = decode_content(body, headers.get("content-encoding"), self.cfg.max_request_bytes)
            req = seen["request"] = decode_infer(body, headers.get(HEADER_LENGTH), max_elements=self.max_elements)
            self.check_rows(req.rows)
        except ServingError as e:
            seen["error"] = e.message
            done(self._finish(error_reply(e), headers, started, wall, seen))
            return None

        def answered(result: Outcome | Exception) -> None:
            self.inflight -= 1
            try:
                outcome = self.outcome(result)
                seen.update(queue_s=outcome.queue_s, infer_s=outcome.infer_s, batch_rows=outcome.batch_rows)
                seen["outputs"] = outcome.outputs
                if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
                    raise refused(outcome.status, outcome.error, outcome.retry_after_s)
                content, extra = encode_infer(name, outcome.version, req, outcome.outputs)
                extra[VERSION_HEADER] = str(outcome.version)
                if outcome.cold_start_s:
                    extra[COLD_START_HEADER] = f"{outcome.cold_start_s * 1000:.1f}"
                reply = Reply(200, content, extra, str(outcome.version))
            except ServingError as e:
                reply, seen["error"] = error_reply(e), e.message
            except Exception:
                log.exception("%s: answering a request failed", name)
                reply = error_reply(ServingError(500, "internal error while answering; see the server log"))
            done(self._finish(reply, headers, started, wall, seen))

        self.inflight += 1
        return self.send(Work(req, int(version) if version else None, label, name), answered)

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
                outcome = await self.submit(
                    Work(InferRequest({}, rows=len(instances)), None, None, self.cfg.name, instances)
                )
                if outcome.status != 200 or outcome.version is None:
                    raise refused(outcome.status, outcome.error, outcome.retry_after_s)
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
