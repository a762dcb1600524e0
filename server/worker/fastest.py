"""`artifact: fastest`: time each loadable artifact on a full batch at warm-up and keep the fastest.

Bounded: at most `BUDGET_S` of timed runs per artifact (after its warm-up), so a version with
five formats costs well under a second more to load. Every candidate is loaded at once while
timing (about its size again per format); the losers are dropped before the version serves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from model_store.runtimes import Runtime

BUDGET_S = 0.1  # of timed runs per artifact
MIN_RUNS, MAX_RUNS = 3, 50


def seconds_per_batch(runtime: Runtime, batch: Mapping[str, np.ndarray[Any, Any]]) -> float:
    """The best of a few timed runs: the least noisy estimate on a shared CPU."""
    best, runs, deadline = float("inf"), 0, time.perf_counter() + BUDGET_S
    while runs < MIN_RUNS or (runs < MAX_RUNS and time.perf_counter() < deadline):
        t = time.perf_counter()
        runtime.predict(batch)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def describe(winner: str, device: str, timings: Mapping[str, float], rows: int) -> str:
    """The `choice` shown in metadata: the winner and every time it was compared with."""
    listed = ", ".join(f"{fmt} {s * 1e3:.3g} ms" for fmt, s in sorted(timings.items(), key=lambda kv: kv[1]))
    return f"{winner} on {device}: the fastest at warm-up on a {rows}-row batch ({listed})"
