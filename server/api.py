"""The thin LitServe edge: one LitAPI and one spec per model.

The spec owns the `/v2/models/<name>/...infer` routes in the HTTP processes: limits, decoding,
putting the request on LitServe's queue, waiting, encoding. The LitAPI lives in the worker:
`setup` starts the manager (never raises), `handle` answers a batch through the current servable.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request, Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from .batching import Outcome, RowBatchLoop, Work, run_batch
from .board import Board
from .config import ModelConfig
from .drain import ignore_termination
from .manager import ServableManager
from .metrics import metrics
from .protocol import HEADER_LENGTH, ProtocolError, decode_infer, encode_infer, error_body

log = logging.getLogger(__name__)
VERSION_HEADER = "x-model-version"  # the body says it too; the header serves metrics and proxies


def check_api_key(expected: str, request: Request) -> None:
    if not expected:
        return
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json", headers=headers)


class V2InferSpec(LitSpec):  # type: ignore[misc]
    """`POST /v2/models/<name>[/versions/<v>]/infer` for one model, in each HTTP process."""

    def __init__(self, cfg: ModelConfig, api_servers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.api_path = f"/v2/models/{cfg.name}/infer"
        # The queue limit is per model; each HTTP process enforces its share without IPC.
        self.queue_limit = max(1, cfg.queue_limit() // api_servers)
        self.inflight = 0
        # Every element takes at least one byte of body, so a shape with more elements than the
        # body limit is absurd whatever its data: refused before anything is allocated.
        self.max_elements = max(1, cfg.max_request_bytes)

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint(self.api_path, self.infer, ["POST"])
        self.add_endpoint(f"/v2/models/{self.cfg.name}/versions/{{version}}/infer", self.infer_version, ["POST"])

    async def infer(self, request: Request) -> Response:
        return await self._infer(request, None)

    async def infer_version(self, version: str, request: Request) -> Response:
        if not version.isdigit() or int(version) < 1:
            return error_response(404, f"model {self.cfg.name!r} has no version {version!r}")
        return await self._infer(request, int(version))

    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(413, f"request body of {declared} bytes is over the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _infer(self, request: Request, version: int | None) -> Response:
        started = time.perf_counter()
        response = await self._answer(request, version)
        m = metrics()
        m.requests.labels(self.cfg.name, response.headers.get(VERSION_HEADER, ""), str(response.status_code)).inc()
        m.latency.labels(self.cfg.name).observe(time.perf_counter() - started)
        return response

    async def _answer(self, request: Request, version: int | None) -> Response:
        if self.inflight >= self.queue_limit:
            return error_response(503, f"model {self.cfg.name!r} is overloaded; retry shortly", {"Retry-After": "1"})
        self.inflight += 1
        try:
            body = await self._read_body(request)
            req = decode_infer(body, request.headers.get(HEADER_LENGTH), max_elements=self.max_elements)
            if req.rows > self.cfg.max_rows_per_request:
                raise ProtocolError(
                    413,
                    f"request has {req.rows} rows, over the limit of {self.cfg.max_rows_per_request}",
                )
            outcome = await self._submit(Work(req, version))
            if outcome.status != 200 or outcome.outputs is None or outcome.version is None:
                return error_response(outcome.status, outcome.error)
            content, headers = encode_infer(self.cfg.name, outcome.version, req, outcome.outputs)
            headers[VERSION_HEADER] = str(outcome.version)
            return Response(content, headers=headers)
        except ProtocolError as e:
            return error_response(e.status, e.message, e.headers)
        finally:
            self.inflight -= 1

    async def _submit(self, work: Work) -> Outcome:
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), work))
        try:
            await asyncio.wait_for(event.wait(), timeout=self.cfg.inference_timeout_s)
        except asyncio.TimeoutError:
            self.response_buffer.pop(uid, None)
            return Outcome(504, error=f"inference took longer than {self.cfg.inference_timeout_s:g}s")
        response, status = self.response_buffer.pop(uid).response
        if status != LitAPIStatus.OK or not isinstance(response, Outcome):
            return Outcome(500, error="the worker serving this model failed; it is being restarted")
        return response


class ModelAPI(ls.LitAPI):  # type: ignore[misc]
    """One model. Pickled into each of its worker processes, where `setup` runs."""

    def __init__(
        self,
        cfg: ModelConfig,
        store_root: Path,
        poll_interval: float,
        api_servers: int,
        threads: int,
    ) -> None:
        super().__init__(
            max_batch_size=cfg.max_batch_size,
            batch_timeout=cfg.batch_timeout_s,
            spec=V2InferSpec(cfg, api_servers),
            loop=RowBatchLoop(),
        )
        self.cfg, self.store_root, self.poll_interval, self.threads = (
            cfg,
            store_root,
            poll_interval,
            threads,
        )
        self.board: Board | None = None  # set by the server before workers start
        self.api_key = ""
        self.log_level = "INFO"
        self.manager: ServableManager | None = None
        self._busy_since = 0.0

    def setup(self, device: Any) -> None:
        """Never raises: a raising setup makes LitServe shut the whole server down."""
        worker = int(os.environ.get("LITSERVE_WORKER_ID", "0"))
        if not logging.getLogger().handlers:  # a spawned worker starts with no logging set up
            logging.basicConfig(
                level=self.log_level,
                format=f"%(asctime)s %(levelname)s {self.cfg.name}[{worker}] %(name)s: %(message)s",
            )
        assert self.board is not None
        ignore_termination()
        m = metrics()
        cfg = self.cfg
        try:
            self.manager = ServableManager(cfg, self.store_root, self.poll_interval, self.board, worker, self.threads)

            def on_reload(result: str, seconds: float) -> None:
                m.reloads.labels(cfg.name, result).inc()
                if result == "loaded":
                    m.load.labels(cfg.name).observe(seconds)

            def on_swap(version: int) -> None:
                m.version.labels(cfg.name, str(worker)).set(version)

            self.manager.on_reload, self.manager.on_swap = on_reload, on_swap
            self.manager.start()
        except Exception:
            log.exception("%s: worker %s could not start its manager", self.cfg.name, worker)
        threading.Thread(target=self._watchdog, name="inference-watchdog", daemon=True).start()

    def handle(self, works: list[Work], enqueued_at: list[float]) -> list[Outcome]:
        manager = self.manager
        servable = manager.current if manager else None
        why_not = "" if servable else (manager.unavailable_reason() if manager else "its worker failed to start")
        now = self._busy_since = time.monotonic()
        m, name = metrics(), self.cfg.name
        for t in enqueued_at:
            m.queue_wait.labels(name).observe(now - t)
        try:
            outcomes = run_batch(servable, name, works, self.cfg.max_batch_size, why_not)
        finally:
            self._busy_since = 0.0
        m.batch_size.labels(name).observe(sum(w.request.rows for w in works))
        m.inference.labels(name).observe(time.monotonic() - now)
        return outcomes

    def _watchdog(self) -> None:
        """A predict that hangs past the timeout takes the worker with it; LitServe restarts it."""
        while True:
            time.sleep(min(1.0, self.cfg.inference_timeout_s / 4))
            busy = self._busy_since
            if busy and time.monotonic() - busy > self.cfg.inference_timeout_s:
                log.error(
                    "%s: predict ran over %ss; recycling this worker",
                    self.cfg.name,
                    self.cfg.inference_timeout_s,
                )
                os._exit(70)

    def authorize(self, request: Request) -> None:
        """The API key guard LitServe puts on this model's routes (health stays open)."""
        check_api_key(self.api_key, request)

    # LitServe's hooks; the custom loop calls `handle` instead of these.
    def decode_request(self, request: Any) -> Any:
        return request

    def predict(self, x: Any) -> Any:
        return x

    def encode_response(self, output: Any) -> Any:
        return output
