"""uvicorn's server loop, ticking once a second instead of ten times.

uvicorn's `Server.main_loop` sleeps 0.1 s between ticks; a tick refreshes the Date header (which
changes once a second) and looks at `should_exit`. Those ten wake-ups a second were most of an idle
HTTP process's CPU. This loop ticks once a second, and a stop signal wakes it at once, so stopping
takes no longer than before. The adapter puts both functions on LitServe's uvicorn server class.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType
from typing import Any

import uvicorn.server

TICK_S = 1.0
_TICKS_PER_DATE = 10  # uvicorn's on_tick refreshes the Date header when counter % 10 == 0


async def main_loop(self: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    self.modeldock_stop = (loop, stop)
    counter = 0
    while not await self.on_tick(counter):
        counter = (counter + _TICKS_PER_DATE) % 864000
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_S)


def handle_exit(self: Any, sig: int, frame: FrameType | None) -> None:
    uvicorn.server.Server.handle_exit(self, sig, frame)
    waiting = getattr(self, "modeldock_stop", None)
    if waiting is not None:  # a signal handler: the loop is woken through its self-pipe
        loop, stop = waiting
        loop.call_soon_threadsafe(stop.set)
