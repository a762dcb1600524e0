"""uvicorn's httptools protocol, changed in three ways (uvicorn takes it as its `http` class):

- A response's head and body leave in one write. uvicorn writes the status line and headers,
  then the body, as two `transport.write` calls: two send syscalls and two TCP segments per
  response, and a client that may wake for each. Here a response head is held until the next
  write of the same connection (its body, in the same loop turn) and both go out as one; a head
  with nothing after it in that turn (a HEAD request, a stream that starts later) goes out at
  the end of the turn.
- A client that disconnects before its answer has its request cancelled in the workers' queue.
- Our edge is the app uvicorn calls, around the FastAPI app it was given (made once per HTTP
  process): an infer request skips FastAPI's and Starlette's `__call__` (FastAPI's reads the
  environment for OpenTelemetry on every request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

_HEAD_START, _HEAD_END = b"HTTP/1.1 ", b"\r\n\r\n"


class OneWriteTransport:
    """Wraps a connection's transport; everything but `write`, `close` and `abort` passes through."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data[:9] == _HEAD_START and data[-4:] == _HEAD_END:
            self._head = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]


class _Event:
    """What uvicorn's protocol calls on a cycle's `message_event`; the fast path awaits nothing."""

    def set(self) -> None:
        pass


class FastCycle:
    """An infer request on the fast path, in uvicorn's `cycle` slot: while it is in flight,
    uvicorn's own logic queues a pipelined request behind it, marks it disconnected when the
    client leaves and keeps the connection open at shutdown until it is answered."""

    def __init__(self, route: Any, keep_alive: bool) -> None:
        self.route, self.keep_alive = route, keep_alive
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False
        self.message_event = _Event()
        self.cancel: Callable[[], object] | None = None  # the request's, while with the workers


class Fast(Protocol):
    """The edge as the fast path sees it (http/edge.py): the route of a path, and a request
    answered through a callback with a reply (`status`, `body`, `headers`)."""

    def infer_route(self, path: str) -> Any: ...

    def start(
        self, call: Any, body: bytes, headers: Mapping[str, str], done: Callable[[Any], None]
    ) -> Callable[[], object] | None: ...


def edge_protocol(wrap_app: Callable[[Any], Any]) -> type[OneWriteProtocol]:
    """The protocol class whose connections call `wrap_app(the app uvicorn loaded)`, and
    answer the edge's infer routes on a fast path."""
    made: list[tuple[Any, Any]] = []  # (app, wrapped); filled in each HTTP process, after fork

    class EdgeProtocol(OneWriteProtocol):
        """An infer request with its whole body at hand (`content-length` up to uvicorn's read
        buffer, no `expect: 100-continue`, no pipelined request before it, HTTP/1.1, a plain
        path) skips the ASGI cycle: no cycle object, event, task or ASGI messages (uvicorn still
        makes its scope when a message begins); its body is gathered in the parser's callbacks
        and its reply written in one piece. Everything else takes uvicorn's path unchanged."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not made or made[0][0] is not self.app:
                made[:] = [(self.app, wrap_app(self.app))]
            self.app = made[0][1]
            self.fast: Fast | None = self.app if hasattr(self.app, "infer_route") else None

        def on_headers_complete(self) -> None:
            route = self._fast_route()
            if route is None:
                super().on_headers_complete()
                return
            # A keep-alive timer armed by a reply written inside this same read must not close
            # the connection under this request.
            self._unset_keepalive_if_required()
            self.cycle = FastCycle(route, self.parser.should_keep_alive())  # type: ignore[assignment]

        def _fast_route(self) -> Any:
            existing = self.cycle
            if (
                self.fast is None
                or self.parser.get_method() != b"POST"
                or self.expect_100_continue
                or (existing is not None and not existing.response_complete)
                or self.parser.get_http_version() != "1.1"
                or self.parser.should_upgrade()
                or b"%" in self.url
                or b"?" in self.url
            ):
                return None
            length = next((v for k, v in self.headers if k == b"content-length"), None)
            if length is None or not length.isdigit() or int(length) > HIGH_WATER_LIMIT:
                return None  # streamed or large: uvicorn reads it with flow control
            return self.fast.infer_route(self.url.decode("ascii"))

        def on_message_complete(self) -> None:
            cycle = self.cycle
            if not isinstance(cycle, FastCycle):
                super().on_message_complete()
                return
            cycle.more_body = False
            assert self.fast is not None
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
            try:  # no task: the reply is written from the callback, in the turn its answer is read
                cycle.cancel = self.fast.start(
                    cycle.route, bytes(cycle.body), headers, lambda reply: self._write(cycle, reply)
                )
            except Exception:
                self.logger.exception("Exception in the infer fast path")
                if not cycle.response_complete:
                    self._write(cycle, None)

        def connection_lost(self, exc: Exception | None) -> None:
            cycle = self.cycle
            if isinstance(cycle, FastCycle) and not cycle.response_complete and cycle.cancel is not None:
                # The client left before its answer: drop its rows before they reach a batch
                # (uvicorn's own path would run them and discard the reply).
                cycle.cancel()
            super().connection_lost(exc)

        def _write(self, cycle: FastCycle, reply: Any) -> None:
            cycle.response_complete = True
            if cycle.disconnected:
                return
            if reply is None:
                status, body, extra = 500, b"Internal Server Error", {"content-type": "text/plain; charset=utf-8"}
                cycle.keep_alive = False
            else:
                status, body, extra = reply.status, reply.body, reply.headers
                if extra.get("connection") == "close":
                    cycle.keep_alive = False
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += (name, b": ", value, b"\r\n")
            for key, text in extra.items():
                head += (key.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n")
            head.append(b"content-length: %d\r\n" % len(body))
            if not cycle.keep_alive and extra.get("connection") != "close":
                head.append(b"connection: close\r\n")
            head += (b"\r\n", body)
            self.transport.write(b"".join(head))
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()  # the next pipelined request, or the keep-alive timer

    return EdgeProtocol
