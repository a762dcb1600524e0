"""Run a flush when the process that registered it exits, however it exits cleanly.

LitServe's HTTP processes are multiprocessing children: they end with `os._exit` after running
multiprocessing's finalizers, so `atexit` alone would never flush their spans or log lines.
Registered with both; the callback runs once, and only in the process that registered it (a
forked child inherits the atexit list, not the duty).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing import util
from typing import Any

log = logging.getLogger(__name__)


def at_process_exit(callback: Callable[[], Any]) -> None:
    owner, done, lock = os.getpid(), [False], threading.Lock()

    def once() -> None:
        with lock:
            if done[0] or os.getpid() != owner:
                return
            done[0] = True
        try:
            callback()
        except Exception:  # exiting anyway: say what was lost, do not mask the exit
            log.exception("telemetry flush at exit failed")

    atexit.register(once)
    util.Finalize(None, once, exitpriority=50)
