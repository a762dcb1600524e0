"""A safe rollout: a new version the policy picks is a *candidate* until evidence promotes it.

Phases of a model: `stable` (no candidate) -> `shadow` (the candidate runs on a copy of live
batches and on both versions' stored examples; only the serving version answers) -> `canary`
(optional: a share of unversioned requests, with the serving version answering any the candidate
fails) -> promoted (the default) or rejected (never chosen by the policy again until its files
change). Not rolled out: a model's first version, a rollback (the serving version left the
store), a change of pin or label by the operator, and `mode: off`. The state lives here, in the
supervisor; decisions are kept in a file (control/decisions.py) so a restart keeps them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import RolloutConfig
from ..ipc.messages import Verdict
from .decisions import Decisions, digest
from .evidence import Evidence, canary_verdict, shadow_verdict

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """One poll's outcome: who answers unversioned requests, who is on trial, and in which phase."""

    default: int | None
    candidate: int | None = None
    phase: str = "stable"
    key: str = ""
    text: str = ""  # shown in the model's metadata


def _ignore_decision(result: str, version: int, reason: str) -> None:
    pass


class Rollout:
    def __init__(self, model: str, decisions: Decisions | None) -> None:
        self.model, self.decisions = model, decisions
        self.candidate: int | None = None
        self.phase = "stable"
        self.key = ""
        self.started = 0.0
        self.text = ""
        self.evidence = Evidence()
        self.on_decision: Callable[[str, int, str], None] = _ignore_decision  # metrics hook

    # ---- what the policy may choose ------------------------------------------------------------
    def rejected(self, version: int, verdict_manifest: Any) -> str:
        """Why a rollout rejected this version with these files ("" if none did)."""
        if self.decisions is None:
            return ""
        found = self.decisions.get(self.model, version, verdict_manifest)
        return f"rollout rejected it: {found.reason}" if found is not None and found.result == "rejected" else ""

    def first_default(self, choice: int | None, verdicts: Mapping[int, Verdict]) -> int | None:
        """At start-up: the newest promoted version that is still there, else the policy's."""
        if self.decisions is not None:
            for version, decision in self.decisions.latest_promoted(self.model):
                verdict = verdicts.get(version)
                if verdict is not None and digest(verdict.manifest) == decision.digest:
                    return version
        return choice

    # ---- one poll ------------------------------------------------------------------------------
    def step(
        self,
        cfg: RolloutConfig,
        default: int | None,
        choice: int | None,
        verdicts: Mapping[int, Verdict],
        reports: Iterable[Mapping[str, Any]],
        command: str = "",
        at_once: bool = False,
    ) -> Plan:
        """`default`: the version serving now; `choice`: the policy's pick among versions not
        rejected; `verdicts`: what is loadable; `command`: an operator's promote or abort;
        `at_once`: the operator changed the policy (no trial)."""
        if default is None or default not in verdicts or at_once or cfg.mode == "off" or choice is None:
            self._end("")  # first version, rollback, operator's choice, or nothing to try
            return Plan(choice if choice is not None else default)
        if choice == default:
            if self.candidate is not None:
                self._end(f"version {self.candidate}: no longer the policy's choice; dropped")
            return Plan(default, text=self.text)
        promoted = self.decisions.get(self.model, choice, verdicts[choice].manifest) if self.decisions else None
        if promoted is not None and promoted.result == "promoted":
            self._end("")  # promoted before (e.g. by a peer sharing the decisions file)
            return Plan(choice, text=self.text)
        if self.candidate != choice:
            self._start(choice, verdicts[choice], cfg)
        reports = list(reports)
        self.evidence = Evidence.total(self.key, reports)
        failed = next((r["load_failed"] for r in reports if r.get("key") == self.key and r.get("load_failed")), "")
        verdict, reason = ("fail", f"the candidate could not load: {failed}") if failed else self._judge(cfg, command)
        if verdict == "pass" and self.phase == "shadow" and cfg.mode == "canary":
            self.phase, self.text = "canary", f"version {choice}: {reason}; canary"
            log.info("%s: %s", self.model, self.text)
            return self._plan(default)
        if verdict == "pass":
            self._decide("promoted", choice, verdicts[choice], reason)
            return Plan(choice, text=self.text)
        if verdict == "fail":
            self._decide("rejected", choice, verdicts[choice], reason)
            return Plan(default, text=self.text)
        self.text = f"version {choice} in {self.phase}: {reason}"
        return self._plan(default)

    def _judge(self, cfg: RolloutConfig, command: str) -> tuple[str, str]:
        if command == "promote":
            return "pass", "promoted by the operator"
        if command == "abort":
            return "fail", "aborted by the operator"
        if self.phase == "canary":
            return canary_verdict(self.evidence, cfg)
        return shadow_verdict(self.evidence, cfg, time.monotonic() - self.started)

    def _plan(self, default: int) -> Plan:
        return Plan(default, self.candidate, self.phase, self.key, self.text)

    def _start(self, version: int, verdict: Verdict, cfg: RolloutConfig) -> None:
        if self.candidate is not None:
            log.info("%s: candidate %s superseded by %s", self.model, self.candidate, version)
            self.on_decision("superseded", self.candidate, "superseded")
        self.candidate, self.phase, self.started = version, "shadow", time.monotonic()
        self.key = f"{version}:{digest(verdict.manifest)[:16]}:{self.started:.3f}"
        self.text = f"version {version} in shadow"
        log.info("%s: version %s is a candidate (%s)", self.model, version, cfg.mode)

    def _decide(self, result: str, version: int, verdict: Verdict, reason: str) -> None:
        self.text = f"version {version} {result}: {reason}"
        (log.info if result == "promoted" else log.error)("%s: %s", self.model, self.text)
        if self.decisions is not None:
            self.decisions.record(self.model, version, verdict.manifest, result, reason)
        self.on_decision(result, version, reason)
        self.candidate, self.phase, self.key = None, "stable", ""

    def _end(self, text: str) -> None:
        if text:
            self.text = text
        self.candidate, self.phase, self.key = None, "stable", ""
