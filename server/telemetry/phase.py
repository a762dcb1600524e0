"""The rollout phase of each model, for spans: the board is one IPC round trip away, never on the
request path, so a thread of the process that traces re-reads it each second and spans take the
last value read."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ..ipc.board import Board

log = logging.getLogger(__name__)
Phase = tuple[str, int | None]  # (rollout phase, candidate version)
PhaseOf = Callable[[str], Phase | None]  # None: not known yet


class PolledPhase:
    """`read(model)` for every model asked about, once per `period_s`, in a thread of this process."""

    def __init__(self, read: Callable[[str], Phase], period_s: float = 1.0) -> None:
        self._read, self._period = read, period_s
        self._known: dict[str, Phase | None] = {}
        self._pid = 0
        self._wake = threading.Event()

    def __call__(self, model: str) -> Phase | None:
        if self._pid != os.getpid():  # first use in this process (the supervisor's copy stays idle)
            self._pid, self._known, self._wake = os.getpid(), {}, threading.Event()
            threading.Thread(target=self._poll, name="rollout-phase", daemon=True).start()
        if model not in self._known:
            self._known[model] = None
            self._wake.set()  # read it now, not in a second
        return self._known[model]

    def _poll(self) -> None:
        while True:
            for model in list(self._known):
                try:
                    self._known[model] = self._read(model)
                except Exception:  # the board is gone while the server stops: keep the last word
                    log.debug("rollout phase of %s not read", model, exc_info=True)
            self._wake.wait(self._period)
            self._wake.clear()


def board_phase(board: Board) -> PhaseOf:
    """Each model's rollout phase and candidate, from the supervisor's decisions on the board."""

    def read(model: str) -> Phase:
        record = board.aspired(model)
        return (record.phase, record.candidate) if record is not None else ("stable", None)

    return PolledPhase(read)
