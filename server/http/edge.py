"""The ASGI edge of each HTTP process, the outermost layer of the app.

- While draining: 503 for every new request but liveness; in-flight requests are counted so the
  supervisor knows when the drain is done.
- Infer requests for served models go straight to their handler: FastAPI's routing, dependency
  injection (a sync dependency costs a thread hop per request) and GZip would add ~0.2 ms of
  CPU and a GIL handoff to each. Everything else falls through to the FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..dataplane.auth import api_key_problem
from ..dataplane.directory import ModelDirectory
from ..errors import ServingError
from ..ipc.drain import Drain
from .infer import InferHandler
from .replies import Reply, error_reply
from .torchserve import predictions

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Body = bytes | AsyncIterator[bytes]
Cancel = Callable[[], object]

_PREFIX, _SUFFIX = "/v2/models/", "/infer"
_V1_PREFIX, _V1_SUFFIX = "/v1/models/", ":predict"
_TS_PREFIX = "/predictions/"  # TorchServe's inference API (http/torchserve.py)


@dataclass(frozen=True)
class InferCall:
    """One infer route of a served model: v2 (with the version or label the path names), v1, or
    TorchServe's predictions (with the version the path names)."""

    handler: InferHandler
    version: str | None = None
    label: str | None = None
    v1: bool = False
    torchserve: bool = False

    async def reply(self, body: Body, headers: Mapping[str, str]) -> Reply:
        if self.v1:
            return await self.handler.reply_v1(body, headers)
        if self.torchserve:
            return await predictions(self.handler, body, headers, self.version)
        return await self.handler.reply(body, headers, self.version, self.label)

    def start(self, body: bytes, headers: Mapping[str, str], done: Callable[[Reply], None]) -> Cancel | None:
        """Returns what cancels the request (its client left), while it is with the workers."""
        if not (self.v1 or self.torchserve):
            uid = self.handler.start(body, headers, self.version, self.label, done)
            return None if uid is None else partial(self.handler.cancel, uid)
        task = asyncio.ensure_future(self.reply(body, headers))  # v1, TorchServe's: coroutines
        _V1_TASKS.add(task)

        def finished(task: asyncio.Task[Reply]) -> None:
            _V1_TASKS.discard(task)
            if task.cancelled() or task.exception() is not None:
                log.error("predict failed: %r", None if task.cancelled() else task.exception())
                done(error_reply(ServingError(500, "internal error while answering; see the server log")))
            else:
                done(task.result())

        task.add_done_callback(finished)
        return task.cancel


_V1_TASKS: set[asyncio.Task[Reply]] = set()  # a running task needs a strong reference


def _shutting_down() -> Reply:
    return error_reply(ServingError(503, "server is shutting down; retry on another replica", {"connection": "close"}))


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def _body(receive: Receive, received: asyncio.Event) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        yield message.get("body", b"")
        if not message.get("more_body"):
            received.set()
            return


async def _client_left(receive: Receive, received: asyncio.Event) -> None:
    """Returns when the client disconnects, once its whole body is read (before that, `_body`
    sees the disconnect). uvicorn's `receive` waits until the disconnect or the response."""
    await received.wait()
    if (await receive())["type"] != "http.disconnect":
        await asyncio.Event().wait()  # not uvicorn's: nothing more to watch for


async def _send(send: Send, reply: Reply) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class Edge:
    """Wraps the app of one HTTP process; `process_index` says which process this is."""

    def __init__(
        self,
        app: ASGIApp,
        drain: Drain,
        directory: ModelDirectory[InferHandler],
        api_key: str,
        process_index: Callable[[], int],
    ) -> None:
        self.app, self.drain, self.directory, self.api_key = app, drain, directory, api_key
        self.process_index = process_index
        self._counter: Any = None

    def _route(self, path: str) -> tuple[InferHandler | None, str | None, str | None]:
        """Handler, version and label for `/v2/models/<name>[/versions/<v> | /labels/<l>]/infer`."""
        inner = path[len(_PREFIX) : -len(_SUFFIX)]
        name, sep, rest = inner.partition("/")
        if not sep:
            return self.directory.handler(name), None, None
        kind, _, value = rest.partition("/")
        if value and "/" not in value:
            if kind == "versions":
                return self.directory.handler(name), value, None
            if kind == "labels":
                return self.directory.handler(name), None, value
        return None, None, None

    def infer_route(self, path: str) -> InferCall | None:
        """For a POST to `path`: a served model's infer route (v2, v1 `:predict`, TorchServe's
        `/predictions/{model}[/{version}]`) with the version or label it names; None for every
        other path."""
        if path.startswith(_TS_PREFIX):
            name, _, pinned = path[len(_TS_PREFIX) :].partition("/")
            served = self.directory.handler(name) if "/" not in pinned else None
            return InferCall(served, pinned or None, torchserve=True) if served is not None else None
        if path.startswith(_V1_PREFIX) and path.endswith(_V1_SUFFIX):
            handler = self.directory.handler(path[len(_V1_PREFIX) : -len(_V1_SUFFIX)])
            if handler is not None:
                return InferCall(handler, v1=True)
        if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
            handler, version, label = self._route(path)
            if handler is not None:
                return InferCall(handler, version, label)
        return None

    def inflight(self) -> Any:
        """This process's count of requests in flight (the supervisor waits for it to drain)."""
        if self._counter is None:  # the process index is known once the process serves
            self._counter = self.drain.inflight[self.process_index()]
        return self._counter

    def _refusal(self, headers: Mapping[str, str]) -> Reply | None:
        if self.drain.flag.is_set():
            return _shutting_down()
        problem = api_key_problem(self.api_key, headers)
        return None if problem is None else error_reply(problem)

    async def answer(self, call: InferCall, body: Body, headers: Mapping[str, str]) -> Reply:
        """An infer request, counted in flight: 503 while draining, the API key, the reply."""
        refusal = self._refusal(headers)
        if refusal is not None:
            return refusal
        counter = self.inflight()
        counter.value += 1
        try:
            return await call.reply(body, headers)
        finally:
            counter.value -= 1

    def start(
        self, call: InferCall, body: bytes, headers: Mapping[str, str], done: Callable[[Reply], None]
    ) -> Cancel | None:
        """`answer` without a coroutine, for the HTTP protocol's fast path (http/wire.py):
        `done(reply)` is called exactly once, at once or when the worker's answer is read.
        Returns what cancels the request if its client leaves first."""
        refusal = self._refusal(headers)
        if refusal is not None:
            done(refusal)
            return None
        counter = self.inflight()
        counter.value += 1

        def finished(reply: Reply) -> None:
            counter.value -= 1
            done(reply)

        try:
            return call.start(body, headers, finished)
        except BaseException:  # never answered: it must not hold the drain for its grace period
            counter.value -= 1
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = self.infer_route(path) if scope["method"] == "POST" else None
        if route is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            received = asyncio.Event()
            answering = asyncio.ensure_future(self.answer(route, _body(receive, received), headers))
            watching = asyncio.ensure_future(_client_left(receive, received))
            try:
                await asyncio.wait((answering, watching), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watching.cancel()
                if not answering.done():  # the client left: its request is cancelled in the queue
                    answering.cancel()
            try:
                reply = await answering
            except (ClientGone, asyncio.CancelledError):  # nothing is sent to a client that left
                return
            await _send(send, reply)
            return
        if self.drain.flag.is_set() and path != "/v2/health/live":
            await _send(send, _shutting_down())
            return
        counter = self.inflight()
        counter.value += 1
        try:
            if scope["method"] == "POST" and path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                name = path[len(_PREFIX) :].partition("/")[0]
                if name in self.directory.static_names:
                    # Unloaded or removed while serving: answered here, since the app behind
                    # still has LitServe's own route for this path.
                    gone = self.directory.removed_reason(name) or "not served"
                    await _send(send, error_reply(ServingError(404, f"model {name!r} is not served: {gone}")))
                    return
            await self.app(scope, receive, send)
        finally:
            counter.value -= 1
