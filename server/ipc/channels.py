"""Requests to a model's workers and answers back, over plain pipes.

- `RequestChannel`: one pipe per HTTP process and model, written from the event loop without
  blocking (a full pipe is finished by `add_writer`), read by the model's workers, which block
  in `get` while idle. (`multiprocessing.Queue` hands each put to a feeder thread, which waits up
  to a GIL switch interval, 5 ms, in a busy HTTP process; a Manager queue costs an IPC round
  trip per put and get.) The requests put in one turn of the event loop go out in one write,
  and a model's only worker reads whatever is queued in one read.
- `ResponseChannels`: one pipe per (HTTP process, worker); a worker sends a whole batch's
  answers for one HTTP process as one message; that process reads on its event loop
  (`add_reader`), all that is there in one read, and completes each request's future directly.

Messages cross as pickled tuples of builtins (`messages.pack_*`), framed as
`multiprocessing.Connection` frames them (a 4-byte length), so a `Connection` can read them.

Both are made by the supervisor before any process starts, and inherited or unpickled by them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import pickle
import select
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from multiprocessing.connection import Connection
from queue import Empty
from typing import Any

from .messages import Answer, Cancel, Outcome, Queued, pack_answers, pack_queued, unpack_answers, unpack_queued

log = logging.getLogger(__name__)
# Spawn-context objects can be handed to spawned workers and inherited by forked HTTP processes.
_CTX = mp.get_context("spawn")
_MAX_FRAME = 0x7FFFFFFF
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's framing
_READ_SIZE = 1 << 16  # a pipe's buffer; larger reads allocate (mmap) and free a buffer each time
_NOTHING = object()
SWEEP_S = 0.1  # how often an HTTP process looks for requests past their inference timeout
# A sole worker spins only while its reads find about one request each (light load). Under load
# the next request is usually there already, and a spin would take the core the HTTP process needs.
SPIN_BELOW_PER_READ = 1.5
OnAnswer = Callable[["Outcome | Exception"], None]
# A worker remembers this many cancels: one for a request it answered already is never asked for.
CANCELS_KEPT = 4096


def _frame(item: Any) -> bytes:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > _MAX_FRAME:
        raise ValueError("message too large for the queue")
    return _HEADER.pack(len(data)) + data


class FrameReader:
    """Whole messages out of a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        messages, at, end = [], 0, len(buffer)
        while end - at >= 4:
            (size,) = _HEADER.unpack_from(buffer, at)
            if end - at - 4 < size:
                break  # the rest of this frame is still on its way
            messages.append(pickle.loads(memoryview(buffer)[at + 4 : at + 4 + size]))
            at += 4 + size
        del buffer[:at]
        return messages


class RequestChannel:
    """Queue-like: `put` in HTTP processes (on the event loop), `get` in workers."""

    def __init__(self, producers: int, consumers: int, spin_s: float = 0.0) -> None:
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
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the producer's (asking costs a getpid)
        self._poller: Any = None  # a consumer's select.poll over the pipes (made where it reads)
        self._received: deque[Any] = deque()  # a sole consumer's messages read ahead
        self._partial: dict[int, FrameReader] = {}
        # After a request, a sole worker polls for the next one without sleeping for up to spin_s:
        # waking a sleeping process costs more than the rest of its hop at one client.
        self.spin_s = spin_s if consumers == 1 else 0.0
        self._taken_at = 0.0
        self._per_read = 1.0  # requests per read, smoothed
        self._cancelled: OrderedDict[tuple[int, int], None] = OrderedDict()  # a consumer's (consumer, uid)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _out=bytearray(), _fd=-1, _waiting_writable=False, _flush_due=False, _loop=None,
            _poller=None, _received=deque(), _partial={}, _taken_at=0.0, _per_read=1.0,
            _cancelled=OrderedDict(),
        )  # fmt: skip
        return state

    # ---- producer side: an HTTP process's event loop ---------------------------------------
    def put(self, item: Queued) -> None:
        if self._fd < 0:
            self._fd = self._writers[item.consumer].fileno()
            os.set_blocking(self._fd, False)
            self._loop = asyncio.get_running_loop()
        self._out += _frame(pack_queued(item))
        self._flush_soon()

    def cancel(self, consumer: int, uid: int) -> None:
        """Request `uid`'s client is gone: behind the request in the same pipe, so a worker that
        has it queued reads the cancel before the request reaches a batch."""
        if self._fd < 0:
            return  # nothing was ever put from this process
        self._out += _frame(tuple(Cancel(consumer, uid)))
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._waiting_writable and not self._flush_due:
            # At the end of this loop turn: the requests of one turn (many at high load) go in
            # one write and wake the worker once; at low load this costs a few microseconds.
            self._flush_due = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._flush_due = False
        if not self._out:
            return
        try:
            sent = os.write(self._fd, self._out)
        except BlockingIOError:
            sent = 0
        del self._out[:sent]
        loop = self._loop
        assert loop is not None
        if self._out and not self._waiting_writable:
            self._waiting_writable = True
            loop.add_writer(self._fd, self._flush)
        elif not self._out and self._waiting_writable:
            self._waiting_writable = False
            loop.remove_writer(self._fd)

    # ---- consumer side: a worker ----------------------------------------------------------
    def cancelled(self, consumer: int, uid: int) -> bool:
        """Whether a cancel for this request has been read (by this worker)."""
        key = (consumer, uid)
        if key in self._cancelled:
            del self._cancelled[key]
            return True
        return False

    def _note(self, message: Any) -> bool:
        """Keep a cancel aside; True when `message` is a request."""
        if len(message) != 2:
            return True
        self._cancelled[(message[0], message[1])] = None
        if len(self._cancelled) > CANCELS_KEPT:
            self._cancelled.popitem(last=False)
        return False

    def get(self, block: bool = True, timeout: float | None = None) -> Queued:
        """The next request; raises `queue.Empty` when none came within `timeout`."""
        if self._received:
            return unpack_queued(self._received.popleft())
        wait_s = timeout if block else 0.0
        deadline = None if wait_s is None else time.monotonic() + wait_s
        if self._poller is None:
            self._poller = select.poll()
            for conn in self._readers:
                self._poller.register(conn.fileno(), select.POLLIN)
        if wait_s != 0.0 and self.spin_s and self._per_read < SPIN_BELOW_PER_READ:
            now = self._spin(deadline)
            if deadline is not None:
                wait_s = max(0.0, deadline - now)
        while True:
            # Wait without the lock: a worker killed while waiting must not leave it held.
            events = self._poller.poll(None if wait_s is None else max(0, int(wait_s * 1000 + 0.999)))
            if not events:
                raise Empty
            item = self._take([fd for fd, _ in events])
            if item is not _NOTHING:
                self._taken_at = time.monotonic()
                return unpack_queued(item)
            if deadline is not None:  # another worker took it, or half a frame came; wait on
                wait_s = deadline - time.monotonic()
                if wait_s <= 0:
                    raise Empty

    def _spin(self, deadline: float | None) -> float:
        """Polls without sleeping until a request is readable or spin_s after the last one."""
        now, until = time.monotonic(), self._taken_at + self.spin_s
        if deadline is not None:
            until = min(until, deadline)
        poll = self._poller.poll
        while now < until and not poll(0):
            os.sched_yield()  # a runnable process on this core goes first
            now = time.monotonic()
        return now

    def _take(self, ready: list[int]) -> Any:
        """One message from a ready pipe. The model's only worker reads all that is queued at
        once (the rest waits in `_received`); several workers take one message at a time."""
        # Rotate the starting pipe so one busy HTTP process cannot starve the others.
        self._next = (self._next + 1) % len(ready)
        order = ready[self._next :] + ready[: self._next]
        if self._read_lock is None:  # the model's only worker: nobody to race with
            for fd in order:
                reader = self._partial.setdefault(fd, FrameReader())
                data = os.read(fd, _READ_SIZE)
                if not data:  # every writer is gone (as Connection.recv would say)
                    raise EOFError("the request channel was closed")
                try:
                    got = [m for m in reader.feed(data) if self._note(m)]
                    self._per_read = 0.8 * self._per_read + 0.2 * len(got)
                    self._received.extend(got)
                except Exception:  # a worker before this one died mid-frame: resynchronise
                    log.error("dropped a garbled request stream; its requests time out")
                    self._partial[fd] = FrameReader()
            return self._received.popleft() if self._received else _NOTHING
        with self._read_lock:  # held only while a message is read, never while waiting
            by_fd = {conn.fileno(): conn for conn in self._readers}
            for fd in order:
                while by_fd[fd].poll(0):
                    message = by_fd[fd].recv()
                    if self._note(message):
                        return message
        return _NOTHING


class WorkerLost(Exception):
    """The worker that took this request died before answering it."""


class ResponseChannels:
    """Worker -> HTTP process answers: one pipe per (HTTP process, worker), so every pipe has a
    single writer and needs no lock (a lock held by a killed worker would stop its
    replacement, which writes to the same pipe)."""

    def __init__(self, consumers: int, writers: Sequence[tuple[str, int]], out_of_order: Collection[str] = ()) -> None:
        self._slots = {w: i for i, w in enumerate(writers)}  # (model, worker index) -> pipe index
        # A model's only worker answers in order, unless it holds requests back (`out_of_order`:
        # the pool within a memory budget parks requests while their model loads).
        single = {m for m, n in Counter(model for model, _ in writers).items() if n == 1}
        self._single = single - set(out_of_order)
        pipes = [[_CTX.Pipe(duplex=False) for _ in writers] for _ in range(consumers)]
        self._readers: list[list[Connection]] = [[r for r, _ in row] for row in pipes]
        self._writers: list[list[Connection]] = [[w for _, w in row] for row in pipes]
        # Process-local state of one HTTP process: uid -> what takes its answer, and per model
        # the unanswered requests in submission order.
        self._waiters: dict[int, OnAnswer] = {}
        self._in_order: dict[str, deque[int]] = {}
        self._reading = False
        self._last_uid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: list[tuple[float, int]] = []
        self._sweep: asyncio.TimerHandle | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Workers never complete futures.
        state.update(_waiters={}, _in_order={}, _reading=False, _loop=None, _deadlines=[], _sweep=None)
        return state

    # ---- worker side ------------------------------------------------------------------------
    def send(self, consumer: int, writer: tuple[str, int], answers: list[Answer]) -> None:
        data = memoryview(_frame(pack_answers(answers)))
        fd = self._writers[consumer][self._slots[writer]].fileno()
        while data:  # a blocking pipe: a large message goes in as the reader makes room
            data = data[os.write(fd, data) :]

    # ---- HTTP process side ----------------------------------------------------------------
    def start_reading(self, consumer: int) -> None:
        """Read this HTTP process's pipes on its running event loop (once)."""
        if self._reading:
            return
        self._reading = True
        loop = self._loop = asyncio.get_running_loop()  # kept: asking for it costs a getpid
        for (model, _), i in self._slots.items():
            fd = self._readers[consumer][i].fileno()
            os.set_blocking(fd, False)  # read on the event loop: never wait for the rest
            loop.add_reader(fd, self._drain, fd, FrameReader(), model, model in self._single)

    def new_uid(self) -> int:
        """Request ids: unique within this HTTP process (which owns the answers), across models."""
        self._last_uid += 1
        return self._last_uid

    def on_answer(self, uid: int, model: str, timeout: float, call: OnAnswer) -> None:
        """`call(outcome)` on the event loop as soon as the answer to `uid` is read (in the same
        loop turn), or `call(TimeoutError())` after `timeout` (give or take `SWEEP_S`), or
        `call(WorkerLost())`; exactly once."""
        loop = self._loop or asyncio.get_running_loop()
        self._waiters[uid] = call
        # One sweep timer for every request instead of a timer armed and cancelled per request.
        self._deadlines.append((loop.time() + timeout, uid))
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._expire, loop)
        if model in self._single:  # only a model's only worker answers in order
            self._in_order.setdefault(model, deque()).append(uid)

    def expect(self, uid: int, model: str, timeout: float) -> Callable[[], Awaitable[Outcome]]:
        """`on_answer` as a future: returns what to await (the outcome; TimeoutError or
        WorkerLost raised)."""
        future: asyncio.Future[Outcome] = (self._loop or asyncio.get_running_loop()).create_future()

        def settle(result: Outcome | Exception) -> None:
            if future.done():
                return
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.on_answer(uid, model, timeout, settle)
        return lambda: future

    def _call(self, uid: int, result: Outcome | Exception) -> None:
        call = self._waiters.pop(uid, None)
        if call is None:
            return  # answered already (e.g. it timed out first)
        try:
            call(result)
        except Exception:  # one request's failure never stops the answers after it
            log.exception("answering request %s failed", uid)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now, waiting = loop.time(), []
        for deadline, uid in self._deadlines:
            if uid not in self._waiters:
                continue
            if deadline > now:
                waiting.append((deadline, uid))
            else:
                self._call(uid, TimeoutError())
        self._deadlines = waiting
        self._sweep = loop.call_later(SWEEP_S, self._expire, loop) if waiting else None

    def _drain(self, fd: int, frames: FrameReader, model: str, in_order: bool) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # every writer closed: nothing more comes on this pipe
            asyncio.get_running_loop().remove_reader(fd)
            return
        for packed in frames.feed(data):
            answers = unpack_answers(packed)
            for uid, outcome in answers:
                self._call(uid, outcome)
            if answers and in_order:
                self._fail_older(model, answers[-1][0])

    def _fail_older(self, model: str, answered: int) -> None:
        """A model's only worker answers in submission order: an answer to `answered` means every
        older request still waiting was taken by a worker that died (and was restarted)."""
        order = self._in_order.get(model)
        while order and order[0] <= answered:
            uid = order.popleft()
            if uid < answered:
                self._call(uid, WorkerLost())
