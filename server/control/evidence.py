"""What the workers saw of a candidate, summed over workers, and the verdict it supports.

Workers compare (worker/shadow.py); the supervisor decides here, so every worker and HTTP process
of a server agrees on the phase. Pure functions over numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..config import RolloutConfig


@dataclass
class Evidence:
    """Counts for one candidate (`key`: its version and files) in one worker, or summed."""

    key: str = ""
    rows: int = 0  # rows compared (live and examples)
    agree: int = 0  # of those, rows whose outputs agree
    nonfinite: int = 0  # rows where the candidate gave NaN or infinity
    errors: int = 0  # shadow batches the candidate failed on
    batches: int = 0  # shadow batches run
    serving_s: float = 0.0  # time the serving version took on the shadowed batches
    candidate_s: float = 0.0  # time the candidate took on the same batches
    canary: int = 0  # unversioned requests the candidate answered (or tried to)
    canary_failed: int = 0  # of those, answered by the serving version after the candidate failed

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def total(cls, key: str, reports: Iterable[Mapping[str, Any]]) -> Evidence:
        out = cls(key)
        for r in reports:
            if r.get("key") != key:
                continue  # a worker still reporting on an earlier candidate
            for f in fields(cls):
                if f.name != "key":
                    setattr(out, f.name, getattr(out, f.name) + r.get(f.name, 0))
        return out

    @property
    def agreement(self) -> float:
        return self.agree / self.rows if self.rows else 0.0

    @property
    def latency_ratio(self) -> float:
        return self.candidate_s / self.serving_s if self.serving_s > 0 else 1.0


def shadow_verdict(ev: Evidence, cfg: RolloutConfig, waited_s: float) -> tuple[str, str]:
    """("pass" | "fail" | "wait", reason)."""
    tries = ev.batches + ev.rows
    if ev.errors and ev.errors / max(1, ev.batches) > cfg.max_error_rate:
        return "fail", f"shadow: the candidate failed on {ev.errors} of {ev.batches} batches"
    if ev.nonfinite:
        return "fail", f"shadow: non-finite outputs on {ev.nonfinite} of {ev.rows} rows"
    enough = ev.rows >= cfg.min_rows or (waited_s >= cfg.decide_after_s and tries > 0)
    if not enough:
        return "wait", f"shadow: {ev.rows}/{cfg.min_rows} rows compared"
    if ev.agreement < cfg.min_agreement:
        what = {"argmax": "arg-max agreement", "allclose": "agreement"}.get(cfg.compare, "agreement")
        return "fail", f"shadow: {what} {ev.agreement:.2f} < {cfg.min_agreement:.2f} over {ev.rows} rows"
    if ev.latency_ratio > cfg.max_latency_ratio:
        return "fail", f"shadow: {ev.latency_ratio:.1f}x the serving version's time > {cfg.max_latency_ratio:g}x"
    return "pass", f"shadow: agreement {ev.agreement:.2f} over {ev.rows} rows, {ev.latency_ratio:.2f}x time"


def canary_verdict(ev: Evidence, cfg: RolloutConfig) -> tuple[str, str]:
    if ev.canary and ev.canary_failed / ev.canary > cfg.max_error_rate and ev.canary_failed >= 2:
        return (
            "fail",
            f"canary: error rate {ev.canary_failed / ev.canary:.2f} > {cfg.max_error_rate:g} over {ev.canary} requests",
        )
    if ev.latency_ratio > cfg.max_latency_ratio and ev.batches >= 5:
        return "fail", f"canary: {ev.latency_ratio:.1f}x the serving version's time > {cfg.max_latency_ratio:g}x"
    if ev.canary < cfg.canary_requests:
        return "wait", f"canary: {ev.canary}/{cfg.canary_requests} requests"
    return "pass", f"canary: {ev.canary_failed} of {ev.canary} requests failed, {ev.latency_ratio:.2f}x time"
