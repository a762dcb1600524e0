"""The infer route of one model in each HTTP process: limits, decode, LitServe's queue, encode.

`reply` is transport-free (body chunks and headers in, a Reply out); the FastAPI routes LitServe
registers and the ASGI fast path in `edge.py` are both thin adapters over it.
"""

from __future__ import annotations

import hmac
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request, Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus

from .batching import Outcome, Work
from .config import ModelConfig
from .metrics import metrics
from .protocol import HEADER_LENGTH, ProtocolError, decode_infer, encode_infer, error_body
from .transport import WorkerLost, await_response

JSON = {"content-type": "application/json"}
# Request ids: unique within this HTTP process (which owns the answers), across all its models.
_UIDS = itertools.count()
VERSION_HEADER = "x-model-version"  # the body says it too; the header serves proxies and logs


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    version: str = ""


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, error_body(message), {**JSON, **(headers or {})})


def api_key_problem(expected: str, headers: Mapping[str, str]) -> str | None:
    if not expected:
        return None
    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return "missing or wrong API key (send X-API-Key or Authorization: Bearer)"


def check_api_key(expected: str, request: Request) -> None:
    problem = api_key_problem(expected, request.headers)
    if problem:
        raise HTTPException(401, problem)


def to_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)


class V2InferSpec(LitSpec):  # type: ignore[misc]
    """`POST /v2/models/<name>[/versions/<v>]/infer` for one model."""

    def __init__(self, cfg: ModelConfig, api_servers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.api_path = f"/v2/models/{cfg.name}/infer"
        # The queue limit is per model; each HTTP process enforces its share without IPC.
        self.queue_limit = max(1, cfg.queue_limit() // api_servers)
        self.inflight = 0
        self._counters: dict[tuple[str, int], Any] = {}  # this process's metric children
        self._latency: Any = None
        # Every element takes at least one byte of body, so a shape with more elements than the
        # body limit is absurd whatever its data: refused before anything is allocated.
        self.max_elements = max(1, cfg.max_request_bytes)

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint(self.api_path, self.infer, ["POST"])
        self.add_endpoint(f"/v2/models/{self.cfg.name}/versions/{{version}}/infer", self.infer_version, ["POST"])

    async def infer(self, request: Request) -> Response:
        return to_response(await self.reply(request.stream(), request.headers, None))

    async def infer_version(self, version: str, request: Request) -> Response:
        return to_response(await self.reply(request.stream(), request.headers, version))

    async def reply(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str], version: str | None) -> Reply:
        started = time.perf_counter()
        reply = await self._reply(chunks, headers, version)
        key = (reply.version, reply.status)
        counter = self._counters.get(key)
        if counter is None:  # label lookups cost more than the increment: keep the children
            counter = self._counters[key] = metrics().requests.labels(self.cfg.name, reply.version, str(reply.status))
            self._latency = self._latency or metrics().latency.labels(self.cfg.name)
        counter.inc()
        self._latency.observe(time.perf_counter() - started)
        return reply

    async def _reply(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str], version: str | None) -> Reply:
        if version is not None and (not version.isdigit() or int(version) < 1):
            return error_reply(404, f"model {self.cfg.name!r} has no version {version!r}")
        if self.inflight >= self.queue_limit:
            return error_reply(503, f"model {self.cfg.name!r} is overloaded; retry shortly", {"retry-after": "1"})
        self.inflight += 1
        try:
            body = await self._read_body(chunks, headers.get("content-length"))
            req = decode_infer(body, headers.get(HEADER_LENGTH), max_elements=self.max_elements)
            if req.rows > self.cfg.max_rows_per_request:
                raise ProtocolError(
                    413, f"request has {req.rows} rows, over the limit of {self.cfg.max_rows_per_request}"
                )
            outcome = await self._submit(Work(req, int(version) if version else None))
            if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
                return error_reply(outcome.status, outcome.error)
            content, extra = encode_infer(self.cfg.name, outcome.version, req, outcome.outputs)
            extra[VERSION_HEADER] = str(outcome.version)
            return Reply(200, content, extra, str(outcome.version))
        except ProtocolError as e:
            return error_reply(e.status, e.message, e.headers)
        finally:
            self.inflight -= 1

    async def _read_body(self, chunks: AsyncIterator[bytes], declared: str | None) -> bytes:
        limit = self.cfg.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(413, f"request body of {declared} bytes is over the limit of {limit}")
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"request body is over the limit of {limit} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _submit(self, work: Work) -> Outcome:
        uid = next(_UIDS)
        waiting = await_response(self.response_buffer, uid, self.cfg.inference_timeout_s, self.cfg.name)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), work))
        try:
            response, status = await waiting()
        except TimeoutError:
            return Outcome(504, error=f"inference took longer than {self.cfg.inference_timeout_s:g}s")
        except WorkerLost:
            return Outcome(503, error="the worker holding this request stopped and was restarted; retry")
        if status != LitAPIStatus.OK or not isinstance(response, Outcome):
            return Outcome(500, error="the worker serving this model failed; it is being restarted")
        return response
