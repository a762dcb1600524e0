"""Requests to a model's workers and answers back, over plain pipes.

- `RequestChannel`: one pipe per HTTP process and model, written from the event loop without
  blocking (a full pipe is finished by `add_writer`), read by the model's workers, which block
  in `get` while idle. (`multiprocessing.Queue` hands each put to a feeder thread, which waits up
  to a GIL switch interval, 5 ms, in a busy HTTP process; a Manager queue costs an IPC round
  trip per put and get.)
- `ResponseChannels`: one pipe per (HTTP process, worker); a worker sends a whole batch's
  answers for one HTTP process as one message; that process reads on its event loop
  (`add_reader`) and completes each request's future directly.

Both are made by the supervisor before any process starts, and inherited or unpickled by them.
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

from .messages import Answer, Outcome, Queued

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

    # ---- producer side: an HTTP process's event loop ---------------------------------------
    def put(self, item: Queued) -> None:
        if self._fd < 0:
            self._fd = self._writers[item.consumer].fileno()
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
    def get(self, block: bool = True, timeout: float | None = None) -> Queued:
        """The next request; raises `queue.Empty` when none came within `timeout`."""
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
                return Queued(*item)
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


class WorkerLost(Exception):
    """The worker that took this request died before answering it."""


class ResponseChannels:
    """Worker -> HTTP process answers: one pipe per (HTTP process, worker), so every pipe has a
    single writer and needs no lock (a lock held by a killed worker would stop its
    replacement, which writes to the same pipe)."""

    def __init__(self, consumers: int, writers: Sequence[tuple[str, int]]) -> None:
        self._slots = {w: i for i, w in enumerate(writers)}  # (model, worker index) -> pipe index
        self._single = {m for m, n in Counter(model for model, _ in writers).items() if n == 1}
        pipes = [[_CTX.Pipe(duplex=False) for _ in writers] for _ in range(consumers)]
        self._readers: list[list[Connection]] = [[r for r, _ in row] for row in pipes]
        self._writers: list[list[Connection]] = [[w for _, w in row] for row in pipes]
        # Process-local state of one HTTP process: uid -> future, and per model the unanswered
        # requests in submission order.
        self._waiters: dict[int, asyncio.Future[Outcome]] = {}
        self._in_order: dict[str, deque[tuple[int, asyncio.Future[Outcome]]]] = {}
        self._reading = False
        self._last_uid = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_waiters={}, _in_order={}, _reading=False)  # workers never complete futures
        return state

    # ---- worker side ------------------------------------------------------------------------
    def send(self, consumer: int, writer: tuple[str, int], answers: list[Answer]) -> None:
        self._writers[consumer][self._slots[writer]].send(answers)

    # ---- HTTP process side ----------------------------------------------------------------
    def start_reading(self, consumer: int) -> None:
        """Read this HTTP process's pipes on its running event loop (once)."""
        if self._reading:
            return
        self._reading = True
        loop = asyncio.get_running_loop()
        for (model, _), i in self._slots.items():
            reader = self._readers[consumer][i]
            loop.add_reader(reader.fileno(), self._drain, reader, model, model in self._single)

    def new_uid(self) -> int:
        """Request ids: unique within this HTTP process (which owns the answers), across models."""
        self._last_uid += 1
        return self._last_uid

    def expect(self, uid: int, model: str, timeout: float) -> Callable[[], Any]:
        """Register a future for `uid`; returns a coroutine factory that waits up to `timeout`
        and raises TimeoutError or WorkerLost."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiters[uid] = future
        if model in self._single:  # only a model's only worker answers in order
            self._in_order.setdefault(model, deque()).append((uid, future))

        async def wait_for() -> Outcome:
            handle = loop.call_later(timeout, self._expire, uid, future)
            try:
                return await future
            finally:
                handle.cancel()

        return wait_for

    def _expire(self, uid: int, future: asyncio.Future[Outcome]) -> None:
        self._waiters.pop(uid, None)
        if not future.done():
            future.set_exception(TimeoutError())

    def _drain(self, reader: Connection, model: str, in_order: bool) -> None:
        try:
            while reader.poll():
                answers: list[Answer] = reader.recv()
                for uid, outcome in answers:
                    future = self._waiters.pop(uid, None)
                    if future is not None and not future.done():
                        future.set_result(outcome)
                if answers and in_order:
                    self._fail_older(model, answers[-1][0])
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(reader.fileno())

    def _fail_older(self, model: str, answered: int) -> None:
        """A model's only worker answers in submission order: an answer to `answered` means every
        older request still waiting was taken by a worker that died (and was restarted)."""
        order = self._in_order.get(model)
        while order and order[0][0] <= answered:
            uid, future = order.popleft()
            if uid < answered and not future.done():
                self._waiters.pop(uid, None)
                future.set_exception(WorkerLost())
