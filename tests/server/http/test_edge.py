"""The ASGI edge in-process: routing to a model's handler, the API key, draining."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.config import ModelConfig
from server.dataplane.directory import ModelDirectory
from server.http.edge import Edge
from server.http.replies import Reply
from server.ipc.board import Board
from server.ipc.drain import Drain


class FakeHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str | None]] = []

    async def reply(self, chunks: Any, headers: Any, version: str | None, label: str | None = None) -> Reply:
        body = b"".join([c async for c in chunks])
        self.calls.append((body, version or (f"label:{label}" if label else None)))
        return Reply(200, b'{"ok":true}', version=version or "")


class FakeApp:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(edge: Edge, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(edge(scope, receive, send))
    return int(sent[0]["status"])


def make(api_key: str = "") -> tuple[Edge, FakeHandler, FakeApp, Drain]:
    handler, app, drain = FakeHandler(), FakeApp(), Drain(1, 5)
    board = Board()
    board.bind({})
    directory = ModelDirectory([ModelConfig(name="m")], board, {"m": handler})  # type: ignore[dict-item]
    return Edge(app, drain, directory, api_key, lambda: 0), handler, app, drain


def test_infer_paths_of_served_models_reach_their_handler_and_the_rest_falls_through() -> None:
    edge, handler, app, _ = make()
    assert call(edge, "POST", "/v2/models/m/infer", b"x") == 200
    assert call(edge, "POST", "/v2/models/m/versions/3/infer", b"y") == 200
    assert call(edge, "POST", "/v2/models/m/labels/stable/infer", b"z") == 200
    assert handler.calls == [(b"x", None), (b"y", "3"), (b"z", "label:stable")]
    assert call(edge, "POST", "/v2/models/m/labels/a/b/infer") == 404  # a served model's, malformed: ours to refuse
    assert call(edge, "POST", "/v2/models/other/infer") == 299  # unknown model: the app's 404 route
    assert call(edge, "GET", "/v2/models/m") == 299
    assert app.paths == ["/v2/models/other/infer", "/v2/models/m"]


def test_the_api_key_guards_infer() -> None:
    edge, handler, _, _ = make(api_key="s3cret")
    assert call(edge, "POST", "/v2/models/m/infer") == 401
    assert call(edge, "POST", "/v2/models/m/infer", headers={"x-api-key": "s3cret"}) == 200
    assert call(edge, "POST", "/v2/models/m/infer", headers={"authorization": "Bearer s3cret"}) == 200
    assert len(handler.calls) == 2


def test_while_draining_new_requests_get_503_but_liveness_answers() -> None:
    edge, handler, _app, drain = make()
    drain.flag.set()
    assert call(edge, "POST", "/v2/models/m/infer") == 503
    assert call(edge, "GET", "/v2/health/ready") == 503
    assert call(edge, "GET", "/v2/health/live") == 299
    assert handler.calls == [] and drain.busy() == 0


def test_the_fast_path_counts_a_request_in_flight_until_its_reply_and_never_leaks_the_count() -> None:
    edge, handler, _, drain = make()
    replies: list[Reply] = []
    pending: list[Any] = []
    handler.start = lambda body, headers, version, label, done: pending.append(done)  # type: ignore[attr-defined]
    route = edge.infer_route("/v2/models/m/infer")
    assert route is not None
    edge.start(route, b"x", {}, replies.append)
    assert drain.busy() == 1 and not replies  # submitted, not answered yet
    pending[0](Reply(200, b"{}"))
    assert drain.busy() == 0 and [r.status for r in replies] == [200]

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug in the handler")

    handler.start = broken  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        edge.start(route, b"x", {}, replies.append)
    assert drain.busy() == 0  # a request that raised does not hold the drain
