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
- responses (`PipeTransport`): one pipe per HTTP process and worker; a worker sends a whole
  batch's answers for that process in one message; the HTTP process reads on its event loop (`add_reader`) and
  completes each request's future directly. LitServe's own response consumer task then idles.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from queue import Empty
from typing import Any

from litserve.transport.base import MessageTransport

# Spawn-context objects can be handed to spawned workers and inherited by forked HTTP processes.
_CTX = mp.get_context("spawn")
_MAX_FRAME = 0x7FFFFFFF
_NOTHING = object()


def _frame(item: Any) -> bytes:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > _MAX_FRAME:
        raise ValueError("message too large for the queue")
    return struct.pack("!i", len(data)) + data  # multiprocessing.Connection's framing


class RequestChannel:
    """Queue-like: `put` in HTTP processes (on the event loop), `get` in workers."""

    def __init__(self, producers: int, consumers: int) -> None:
        pipes = [_CTX.Pipe(duplex=False) for _ in range(producers)]
        self._readers: list[Connection] = [r for r, _ in pipes]
        self._writers: list[Connection] = [w for _, w in pipes]
        # Several workers of one model share the pipes; a single worker needs no lock (and a
        # lock held by a killed worker would stop its replacement).
        self._read_lock = _CTX.Lock() if consumers > 1 else None
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

    def _flush(self) -> None:
        try:
            sent = os.write(self._fd, self._out)
        except BlockingIOError:
            sent = 0
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out and not self._waiting_writable:
            self._waiting_writable = True
            loop.add_writer(self._fd, self._flush)
        elif not self._out and self._waiting_writable:
            self._waiting_writable = False
            loop.remove_writer(self._fd)

    # ---- consumer side: a worker ----------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        wait_s = timeout if block else 0.0
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            # Wait without the lock: a worker killed while waiting must not leave it held.
            if len(self._readers) == 1:  # one HTTP process: a single poll() instead of a selector
                ready = self._readers if self._readers[0].poll(wait_s) else []
            else:
                ready = wait(self._readers, wait_s)  # type: ignore[assignment]
            if not ready:
                raise Empty
            item = self._take(ready)
            if item is not _NOTHING:
                return item
            if deadline is not None:  # another worker took it; wait for the rest of the time
                wait_s = deadline - time.monotonic()
                if wait_s <= 0:
                    raise Empty

    def _take(self, ready: list[Connection]) -> Any:
        """Receive one message from a ready pipe; with several workers, one at a time."""
        # Rotate the starting pipe so one busy HTTP process cannot starve the others.
        self._next = (self._next + 1) % len(ready)
        order = ready[self._next :] + ready[: self._next]
        if self._read_lock is None:  # the model's only worker: nobody to race with
            return order[0].recv()
        with self._read_lock:  # held only while a message is read, never while waiting
            for conn in order:
                if conn.poll(0):
                    return conn.recv()
        return _NOTHING


class PipeTransport(MessageTransport):  # type: ignore[misc]
    """Worker -> HTTP process responses: one pipe per (HTTP process, worker), so every pipe has
    a single writer and needs no lock (a lock held by a killed worker would stop its
    replacement, which writes to the same pipe)."""

    def __init__(self, consumers: int, writers: list[tuple[str, int]], waiters: dict[Any, Any]) -> None:
        self._slots = {w: i for i, w in enumerate(writers)}  # (model, worker id) -> pipe index
        pipes = [[_CTX.Pipe(duplex=False) for _ in writers] for _ in range(consumers)]
        self._readers: list[list[Connection]] = [[r for r, _ in row] for row in pipes]
        self._writers: list[list[Connection]] = [[w for _, w in row] for row in pipes]
        # uid -> future, in each HTTP process (LitServe's response_buffer dict, process-local).
        self.waiters = waiters
        self._reading = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["waiters"], state["_reading"] = {}, False  # workers never complete futures
        return state

    def send(self, item: Any, consumer_id: int) -> None:
        raise NotImplementedError("modeldock's loop answers through send_many")

    def send_many(self, items: Sequence[Any], consumer_id: int, writer: tuple[str, int]) -> None:
        """Items are LitServe's (uid, (response, status, response_type, worker_id))."""
        self._writers[consumer_id][self._slots[writer]].send(list(items))

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        """LitServe's consumer task calls this in a loop; answers go straight to the waiting
        futures instead, so this only starts the readers and then waits until cancelled."""
        loop = asyncio.get_running_loop()
        if not self._reading:
            self._reading = True
            workers = Counter(model for model, _ in self._slots)
            for (model, _), i in self._slots.items():
                reader = self._readers[consumer_id][i]
                loop.add_reader(reader.fileno(), self._drain, reader, model, workers[model] == 1)
        await loop.create_future()

    def _drain(self, reader: Connection, model: str, in_order: bool) -> None:
        try:
            while reader.poll():
                batch = reader.recv()
                for uid, (response, status, *_) in batch or ():
                    future = self.waiters.pop(uid, None)
                    if future is not None and not future.done():
                        future.set_result((response, status))
                if batch and in_order:
                    _fail_older(self.waiters, model, batch[-1][0])
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(reader.fileno())

    def close(self, send_sentinel: bool = True) -> None:
        """Nothing to flush: HTTP processes stop reading when they stop."""


class WorkerLost(Exception):
    """The worker that took this request died before answering it."""


# Per model, this HTTP process's unanswered requests in submission order (process-local).
_IN_ORDER: dict[str, deque[tuple[int, asyncio.Future[Any]]]] = {}


def _fail_older(waiters: dict[Any, Any], model: str, answered: int) -> None:
    """A model's only worker answers in submission order: an answer to `answered` means every
    older request still waiting was taken by a worker that died (LitServe restarted it)."""
    order = _IN_ORDER.get(model)
    while order and order[0][0] <= answered:
        uid, future = order.popleft()
        if uid < answered and not future.done():
            waiters.pop(uid, None)
            future.set_exception(WorkerLost())


def await_response(waiters: dict[Any, Any], uid: int, timeout: float, model: str) -> Callable[[], Any]:
    """Register a future for `uid`; returns a coroutine factory that waits up to `timeout`."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    waiters[uid] = future
    _IN_ORDER.setdefault(model, deque()).append((uid, future))

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
