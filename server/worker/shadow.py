"""In a worker: the candidate on a copy of the serving version's batches, and on the examples.

Only the serving version's answers reach clients: the shadow run happens after they are sent.
The comparison is per row: by default arg-max agreement for [N, k>1] float outputs (class
scores: a retrain changes scores but should keep the labels), allclose (atol/rtol) for every other
output. Counts accumulate in an `Evidence` that the worker reports and the supervisor judges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model_store.runtimes import Tensors
from model_store.verify import load_examples

from ..config import RolloutConfig
from ..control.evidence import Evidence
from ..ipc.messages import Work
from .loader import Servable
from .rows import stack

log = logging.getLogger(__name__)


def _row_agreement(kind: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], atol: float, rtol: float) -> Any:
    """Per row: does the candidate's output `b` agree with the serving version's `a`?"""
    if a.shape != b.shape:
        return np.zeros(a.shape[0] if a.ndim else 1, dtype=bool)
    classes = a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f"
    if kind == "argmax" or (kind == "auto" and classes):
        flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return np.argmax(flat_a, axis=1) == np.argmax(flat_b, axis=1)
    close = np.isclose(a, b, atol=atol, rtol=rtol)
    return close.reshape(close.shape[0], -1).all(axis=1) if close.ndim else np.array([bool(close)])


def compare(serving: Tensors, candidate: Tensors, cfg: RolloutConfig) -> tuple[int, int, int]:
    """(rows, rows agreeing on every output, rows where the candidate is not finite)."""
    rows = next(iter(serving.values())).shape[0]
    agree = np.ones(rows, dtype=bool)
    nonfinite = np.zeros(rows, dtype=bool)
    for name, a in serving.items():
        b = candidate.get(name)
        if b is None:
            return rows, 0, 0
        agree &= _row_agreement(cfg.compare, a, b, cfg.atol, cfg.rtol)
        if b.dtype.kind == "f":
            nonfinite |= ~np.isfinite(b.reshape(b.shape[0], -1)).all(axis=1)
    return rows, int((agree & ~nonfinite).sum()), int(nonfinite.sum())


class Shadow:
    """One worker's trial of one candidate."""

    def __init__(self, cfg: RolloutConfig, key: str, serving: Servable, candidate: Servable) -> None:
        self.cfg, self.serving, self.candidate = cfg, serving, candidate
        self.evidence = Evidence(key)
        self._batches = 0

    def run_examples(self) -> None:
        """Both versions' stored examples through both: a quiet model gets evidence too."""
        for servable in (self.serving, self.candidate):
            manifest = servable.manifest
            try:
                inputs, _ = load_examples(servable.folder / manifest.examples.path)
            except Exception as e:  # examples unreadable: live traffic must decide
                log.warning("%s: examples of version %s unreadable: %s", servable.name, servable.version, e)
                continue
            self._compare(inputs)

    def after_batch(self, works: Sequence[Work], outputs: Sequence[Tensors], serving_s: float) -> None:
        """A copy of a batch the serving version answered in `serving_s` (a share of them)."""
        self._batches += 1
        if self.cfg.shadow_share < 1 and (self._batches * self.cfg.shadow_share) % 1 >= self.cfg.shadow_share:
            return  # an even spread of the configured share, with no random draw
        inputs = stack([w.request.inputs for w in works])
        started = time.perf_counter()
        try:
            candidate = self.candidate.predict(inputs)
        except Exception:
            self.evidence.errors += 1
            self.evidence.batches += 1
            return
        self.evidence.candidate_s += time.perf_counter() - started
        serving = stack(outputs)
        self.evidence.serving_s += serving_s
        self.evidence.batches += 1
        self._add(serving, candidate)

    def _compare(self, inputs: Tensors) -> None:
        try:
            serving = self.serving.predict(inputs)
            candidate = self.candidate.predict(inputs)
        except Exception:
            self.evidence.errors += 1
            return
        self._add(serving, candidate)

    def _add(self, serving: Tensors, candidate: Tensors) -> None:
        rows, agree, nonfinite = compare(serving, candidate, self.cfg)
        ev = self.evidence
        ev.rows, ev.agree, ev.nonfinite = ev.rows + rows, ev.agree + agree, ev.nonfinite + nonfinite
