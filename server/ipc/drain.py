"""Graceful shutdown: drain on SIGTERM (and Ctrl+C), whichever process of the group gets it.

Kubernetes, Docker and systemd send SIGTERM to the main process or to the whole process group.
LitServe 0.2.19 handles only KeyboardInterrupt in its main process; SIGTERM kills main and
orphans the rest. Here the main process turns SIGTERM/SIGINT into a drain: new requests get 503,
accepted ones finish, then main stops the HTTP processes (SIGINT, which uvicorn drains), kills
the idle workers and the queue manager. Every child ignores SIGTERM, so a group-wide signal
cannot cut a request short.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


SETTLE_S = 0.3


def _nothing() -> None:
    pass


class Drain:
    """The shared drain flag and per-HTTP-process in-flight counters (made before any fork)."""

    def __init__(self, api_servers: int, grace_s: float) -> None:
        ctx = mp.get_context("fork")
        self.flag = ctx.Event()
        self.inflight: list[Synchronized[int]] = [ctx.Value("i", 0, lock=False) for _ in range(api_servers)]
        self.grace_s = grace_s
        self.main_pid = os.getpid()

    def busy(self) -> int:
        return sum(c.value for c in self.inflight)

    def install(self, stop: Callable[[], None], seal: Callable[[], None] = _nothing) -> None:
        """In the main process: SIGTERM and SIGINT start the drain; children inherit a no-op.
        `seal` stops the listener taking new connections (the queued ones are still answered)."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != self.main_pid or self.flag.is_set():
                return
            log.info("signal %s: draining (grace %ss)", signal.Signals(signum).name, self.grace_s)
            self.flag.set()
            seal()
            threading.Thread(target=self._wait_then_stop, args=(stop,), daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _wait_then_stop(self, stop: Callable[[], None]) -> None:
        deadline = time.monotonic() + max(1.0, self.grace_s - 5)  # leave time to stop processes
        # Connections queued before the seal are accepted and answered (503) in this time; one
        # accepted but not yet read is not counted in flight, and would be closed unanswered.
        time.sleep(SETTLE_S)
        while self.busy() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        log.info("drained (%d requests still in flight); stopping", self.busy())
        stop()


def ignore_termination() -> None:
    """For worker processes: only the main process decides when they stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_process(proc: Any, sig: int, timeout: float) -> None:
    """Send `sig`, wait up to `timeout`, then kill."""
    if not proc.is_alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    proc.join(timeout)
    if proc.is_alive():
        log.warning("%s did not stop in %ss; killing it", proc.name, timeout)
        proc.kill()
        proc.join(5)
