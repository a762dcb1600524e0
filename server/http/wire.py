"""uvicorn's httptools protocol, changed in two ways (uvicorn takes it as its `http` class):

- A response's head and body leave in one write. uvicorn writes the status line and headers,
  then the body, as two `transport.write` calls: two send syscalls and two TCP segments per
  response, and a client that may wake for each. Here a response head is held until the next
  write of the same connection (its body, in the same loop turn) and both go out as one; a head
  with nothing after it in that turn (a HEAD request, a stream that starts later) goes out at
  the end of the turn.
- Our edge is the app uvicorn calls, around the FastAPI app it was given (made once per HTTP
  process): an infer request skips FastAPI's and Starlette's `__call__` (FastAPI's reads the
  environment for OpenTelemetry on every request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


def edge_protocol(wrap_app: Callable[[Any], Any]) -> type[OneWriteProtocol]:
    """The protocol class whose connections call `wrap_app(the app uvicorn loaded)`."""
    made: list[tuple[Any, Any]] = []  # (app, wrapped); filled in each HTTP process, after fork

    class EdgeProtocol(OneWriteProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not made or made[0][0] is not self.app:
                made[:] = [(self.app, wrap_app(self.app))]
            self.app = made[0][1]

    return EdgeProtocol
