"""A model whose load a test can see begin: an importable factory for the server's workers."""

from __future__ import annotations

import os
import time

from tests.fakes import TinyMLP

LOAD_SECONDS = 4.0


class MarkedSlowLoad(TinyMLP):
    """Appends the building process's PID to `marker`, then takes LOAD_SECONDS to build."""

    def __init__(self, seed: int = 0, hidden: int = 8, marker: str = "") -> None:
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(LOAD_SECONDS)
        super().__init__(seed, hidden)


def loaders(marker: str) -> list[int]:
    """PIDs that started building the model, in order."""
    try:
        with open(marker) as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
