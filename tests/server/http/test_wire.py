"""One write per response: a response head waits for its body, within one loop turn only."""

from __future__ import annotations

import asyncio

from server.http.wire import OneWriteTransport
from tests.fakes import RecordingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_head_and_its_body_leave_in_one_write() -> None:
    async def run() -> list[bytes]:
        inner = RecordingTransport()
        wire = OneWriteTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        wire.write(HEAD)
        wire.write(b"{}")
        await asyncio.sleep(0)
        return inner.writes

    assert asyncio.run(run()) == [HEAD + b"{}"]


def test_a_head_alone_leaves_at_the_end_of_the_loop_turn_and_close_sends_what_waits() -> None:
    async def run() -> None:
        inner = RecordingTransport()
        wire = OneWriteTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        wire.write(HEAD)  # a HEAD request's answer: nothing follows
        assert inner.writes == []
        await asyncio.sleep(0)
        assert inner.writes == [HEAD]
        wire.write(HEAD)
        wire.close()  # e.g. `connection: close` right after the head
        assert inner.writes == [HEAD, HEAD] and inner.closed

    asyncio.run(run())


def test_other_writes_pass_through_and_other_calls_reach_the_transport() -> None:
    async def run() -> None:
        inner = RecordingTransport()
        wire = OneWriteTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        wire.write(b"5\r\nhello\r\n")  # a chunk of a streamed body
        assert inner.writes == [b"5\r\nhello\r\n"]
        assert wire.get_extra_info("peername") == ("127.0.0.1", 5)

    asyncio.run(run())
