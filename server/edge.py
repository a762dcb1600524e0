"""The ASGI edge of each HTTP process, the outermost layer of LitServe's FastAPI app.

- While draining: 503 for every new request but liveness; in-flight requests are counted so the
  main process knows when the drain is done.
- Infer requests for served models go straight to their spec: FastAPI's routing, dependency
  injection (a sync dependency costs a thread hop per request) and GZip would add ~0.2 ms of
  CPU and a GIL handoff to each. They still travel through LitServe's uvicorn server, request
  queue, batching loop and worker. Everything else falls through to the FastAPI app.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from .drain import Drain
from .spec import Reply, V2InferSpec, api_key_problem, error_reply

_PREFIX, _SUFFIX = "/v2/models/", "/infer"


def install_edge(app: Any, edge: Callable[[Any], Any]) -> None:
    """Make `edge` the outermost layer of a FastAPI app, outside Starlette's error and FastAPI's
    telemetry and body-limit middlewares too (`add_middleware` would put it inside them)."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: edge(build())


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def _body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _send(send: Any, reply: Reply) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class Edge:
    def __init__(self, app: Any, drain: Drain, specs: Mapping[str, V2InferSpec], api_key: str) -> None:
        self.app, self.drain, self.specs, self.api_key = app, drain, dict(specs), api_key
        self._counter: Synchronized[int] | None = None

    def _route(self, path: str) -> tuple[V2InferSpec | None, str | None]:
        """The spec and version for `/v2/models/<name>[/versions/<v>]/infer`, if served here."""
        inner = path[len(_PREFIX) : -len(_SUFFIX)]
        name, sep, rest = inner.partition("/")
        if not sep:
            return self.specs.get(name), None
        if rest.startswith("versions/") and "/" not in rest[9:]:
            return self.specs.get(name), rest[9:]
        return None, None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.drain.flag.is_set() and path != "/v2/health/live":
            reply = error_reply(503, "server is shutting down; retry on another replica", {"connection": "close"})
            await _send(send, reply)
            return
        if self._counter is None:  # LitServe sets this process's index before it serves
            self._counter = self.drain.inflight[int(os.environ.get("LITSERVE_WORKER_ID", "0"))]
        counter = self._counter
        counter.value += 1
        try:
            if scope["method"] == "POST" and path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                spec, version = self._route(path)
                if spec is not None:
                    await self._infer(spec, version, scope, receive, send)
                    return
            await self.app(scope, receive, send)
        finally:
            counter.value -= 1

    async def _infer(
        self, spec: V2InferSpec, version: str | None, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = api_key_problem(self.api_key, headers)
        if problem:
            await _send(send, error_reply(401, problem))
            return
        try:
            reply = await spec.reply(_body(receive), headers, version)
        except ClientGone:
            return
        await _send(send, reply)
