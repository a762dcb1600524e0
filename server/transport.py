"""Faster queues for LitServe: requests and responses without the multiprocessing Manager.

LitServe 0.2.19 sends every request and response through `multiprocessing.Manager` queues: each
put or get is an IPC round trip through the Manager process, four per request, plus a thread hop
per response (~2 ms of CPU per request here). Its `fast_queue=True` (ZeroMQ) is silently ignored
(the constructor passes `transport_config=` where the field is `transport_type`) and broken
underneath. `ModeldockServer._init_manager` swaps in:

- request queues (`RequestChannel`): one pipe per HTTP process and model, written from the event
  loop without blocking (a full pipe is finished by `add_writer`), read by the model's workers,
  which block in `get` while idle. (`multiprocessing.Queue` hands each put to a feeder thread, which waits up to a GIL
  switch interval, 5 ms, in a busy HTTP process.)
- responses (`PipeTransport`): one pipe per HTTP process; a worker sends a whole batch's answers
  for that process in one message; the HTTP process reads on its event loop (`add_reader`) and
  completes each request's future directly. LitServe's own response consumer task then idles.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from queue import Empty
from typing import Any

from litserve.transport.base import MessageTransport

# Spawn-context objects can be handed to spawned workers and inherited by forked HTTP processes.
_CTX = mp.get_context("spawn")
_MAX_FRAME = 0x7FFFFFFF


def _frame(item: Any) -> bytes:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > _MAX_FRAME:
        raise ValueError("message too large for the queue")
    return struct.pack("!i", len(data)) + data  # multiprocessing.Connection's framing


class RequestChannel:
    """Queue-like: `put` in HTTP processes (on the event loop), `get` in workers."""

    def __init__(self, producers: int) -> None:
        pipes = [_CTX.Pipe(duplex=False) for _ in range(producers)]
        self._readers: list[Connection] = [r for r, _ in pipes]
        self._writers: list[Connection] = [w for _, w in pipes]
        self._read_lock = _CTX.Lock()  # several workers of one model share the pipes
        self._next = 0
        self._out = bytearray()  # this producer's unsent bytes (never pickled)
        self._fd = -1
        self._waiting_writable = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_out=bytearray(), _fd=-1, _waiting_writable=False)
        return state

    # ---- producer side: the HTTP process's event loop -----------------------------------
    def put(self, item: Any) -> None:
        if self._fd < 0:
            self._fd = self._writers[int(os.environ.get("LITSERVE_WORKER_ID", "0"))].fileno()
            os.set_blocking(self._fd, False)
        self._out += _frame(item)
        if not self._waiting_writable:
            self._flush()  # at once: a later loop iteration would add latency at low load

    put_nowait = put

    def _flush(self) -> None:
        try:
            sent = os.write(self._fd, self._out)
        except BlockingIOError:
            sent = 0
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out and not self._waiting_writable:
            self._waiting_writable = True
            loop.add_writer(self._fd, self._writable)
        elif not self._out and self._waiting_writable:
            self._waiting_writable = False
            loop.remove_writer(self._fd)

    def _writable(self) -> None:
        self._flush()

    # ---- consumer side: a worker ----------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        wait_s = timeout if block else 0.0
        if not self._read_lock.acquire(timeout=-1 if wait_s is None else max(wait_s, 0.0)):
            raise Empty
        try:
            if len(self._readers) == 1:  # one HTTP process: a single poll() instead of a selector
                ready = self._readers if self._readers[0].poll(wait_s) else []
            else:
                ready = wait(self._readers, wait_s)  # type: ignore[assignment]
            if not ready:
                raise Empty
            # Rotate the starting pipe so one busy HTTP process cannot starve the others.
            self._next = (self._next + 1) % len(ready)
            return ready[self._next].recv()
        finally:
            self._read_lock.release()

    def get_nowait(self) -> Any:
        return self.get(block=False)


class PipeTransport(MessageTransport):  # type: ignore[misc]
    """Worker -> HTTP process responses, one pipe per HTTP process (LitServe's consumer id)."""

    def __init__(self, consumers: int, waiters: dict[Any, Any]) -> None:
        pipes = [_CTX.Pipe(duplex=False) for _ in range(consumers)]
        self._readers: list[Connection] = [r for r, _ in pipes]
        self._writers: list[Connection] = [w for _, w in pipes]
        # Several workers write to one pipe: a message larger than PIPE_BUF must not interleave.
        self._locks = [_CTX.Lock() for _ in range(consumers)]
        # uid -> future, in each HTTP process (LitServe's response_buffer dict, process-local).
        self.waiters = waiters
        self._reading = False
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["waiters"], state["_reading"] = {}, False  # workers never complete futures
        return state

    def send(self, item: Any, consumer_id: int) -> None:
        self.send_many([item], consumer_id)

    def send_many(self, items: Sequence[Any], consumer_id: int) -> None:
        """Items are LitServe's (uid, (response, status, response_type, worker_id))."""
        with self._locks[consumer_id]:
            self._writers[consumer_id].send(list(items))

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        """LitServe's consumer task calls this in a loop; answers go straight to the waiting
        futures instead, so this only starts the reader and then waits until cancelled."""
        if not self._reading:
            self._reading = True
            reader = self._readers[consumer_id]
            asyncio.get_running_loop().add_reader(reader.fileno(), self._drain, reader)
        await asyncio.get_running_loop().create_future()

    def _drain(self, reader: Connection) -> None:
        try:
            while reader.poll():
                batch = reader.recv()
                if batch is None:
                    continue
                for uid, (response, status, *_) in batch:
                    future = self.waiters.pop(uid, None)
                    if future is not None and not future.done():
                        future.set_result((response, status))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(reader.fileno())

    def close(self, send_sentinel: bool = True) -> None:
        self._closed = True
        if send_sentinel:
            for i in range(len(self._writers)):
                with contextlib.suppress(OSError):
                    self._writers[i].send(None)


def await_response(waiters: dict[Any, Any], uid: Any, timeout: float) -> Callable[[], Any]:
    """Register a future for `uid`; returns a coroutine factory that waits up to `timeout`."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    waiters[uid] = future

    async def wait_for() -> Any:
        handle = loop.call_later(timeout, _expire, waiters, uid, future)
        try:
            return await future
        finally:
            handle.cancel()

    return wait_for


def _expire(waiters: dict[Any, Any], uid: Any, future: asyncio.Future[Any]) -> None:
    waiters.pop(uid, None)
    if not future.done():
        future.set_exception(TimeoutError())
