"""The one decision point per model, in the supervisor: which version every worker should serve.

A control thread polls each model's source; the decision (the aspired versions with their verdicts,
plus what the store holds) goes on the board, where every worker of the model reads the same
record. A store that cannot be read changes nothing: workers keep what they serve, and the
failure is shown in the model's metadata and logged without flooding the log.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from model_store import StoreError
from model_store.policy import VersionPolicy

from ..config import ModelConfig
from ..ipc.board import Board
from ..ipc.messages import DONE, MODEL_ACTIONS, ROLLOUT_ACTIONS, Ack, AspiredRecord, Command
from .decisions import Decisions
from .rollout import Plan, Rollout
from .source import Aspired, StoreSource
from .version_set import VersionSet

log = logging.getLogger(__name__)

# While the store cannot be read, say so at the first failed poll and then at most this often.
POLL_ERROR_LOG_S = 60.0


def _ignore_rejection(model: str) -> None:
    pass


def _nothing() -> None:
    pass


def _ignore_polled(model: ModelControl, before: AspiredRecord) -> None:
    pass


def _refuse(command: Command) -> Ack:
    return Ack(409, "models cannot be loaded or unloaded here (pool_workers is 0)")


def _one(name: str) -> int:
    return 1


class ModelControl:
    """Decides for one model; `poll` is one round (called by the control loop, or a test)."""

    def __init__(self, cfg: ModelConfig, source: StoreSource, decisions: Decisions | None = None) -> None:
        self.cfg, self.source, self.decisions = cfg, source, decisions
        self.record = AspiredRecord(policy=cfg.policy, labels=dict(cfg.labels))
        self.rollout = Rollout(cfg.name, decisions)
        source.excluded = self.rollout.rejected
        self._at_once = False  # the operator changed the policy: no trial for its choice
        self.removed = ""  # set by the registry: why this model is not served any more
        # The operator's per-version word (admin API), per replica until a restart.
        self.extra: set[int] = set()
        self.excluded: set[int] = set()
        self.pinned: int | None = None
        self._logged_rejections: set[tuple[int, str]] = set()
        self._failures = 0
        self._failed_since = 0.0
        self._logged_at = 0.0
        self.on_rejected: Callable[[str], None] = _ignore_rejection  # metrics hook

    def poll(self, reports: Sequence[Mapping[str, Any]] = (), command: Command | None = None) -> AspiredRecord:
        """One refresh of the decision; never raises. `reports`: the workers' evidence on the
        candidate; `command`: an operator's promote or abort for it."""
        if self.removed:
            self.record = AspiredRecord(policy=self.cfg.policy, removed=self.removed)
            return self.record
        also = ({self.record.default} if self.record.default is not None else set()) | self.extra
        if self.record.default is None and self.decisions is not None:  # a restart: promotions made
            also = {v for v, _ in self.decisions.latest_promoted(self.cfg.name)}
        try:
            aspired = self.source.poll(also)
        except Exception as e:  # the decision must outlive any surprise in the store
            self._poll_failed(e)
            return self.record
        if self._failures:
            log.warning(
                "%s: store readable again after %d failed poll(s) over %.1fs",
                self.cfg.name,
                self._failures,
                time.monotonic() - self._failed_since,
            )
            self._failures = 0
        self._log_rejections(aspired)
        if aspired.settling:
            return self.record
        self.record = self._decide(aspired, reports, command.action if command is not None else "")
        return self.record

    def _decide(self, aspired: Aspired, reports: Sequence[Mapping[str, Any]], command: str) -> AspiredRecord:
        previous = self.record
        verdicts, choice, note = dict(aspired.verdicts), aspired.default, ""
        serving = previous.default
        if serving is None:
            serving = self.rollout.first_default(choice, verdicts)
        if choice is None and serving is not None and serving not in aspired.valid:
            # Nothing valid left: the version in memory keeps serving (workers keep it).
            note = f"version {serving} left the store and no valid version remains; keeping it in memory"
            if note != previous.note:
                log.warning("%s: %s", self.cfg.name, note)
            verdicts[serving] = previous.verdicts[serving]
            plan = Plan(serving, text=self.rollout.text)
        else:
            plan = self.rollout.step(self.cfg.rollout, serving, choice, verdicts, reports, command, self._at_once)
            self._at_once = False
        # Load the policy's window, the default and the candidate, with the operator's changes.
        keep = set(self.source.versions.select(aspired.valid, choice)) - self.excluded
        keep |= self.extra | {v for v in (plan.default, plan.candidate) if v is not None}
        verdicts = {v: verdicts[v] for v in verdicts if v in keep}
        if plan.default != previous.default or verdicts.keys() != previous.verdicts.keys():
            log.info(
                "%s: default version %s, loaded %s (was %s, %s)",
                self.cfg.name,
                plan.default,
                sorted(verdicts),
                previous.default,
                sorted(previous.verdicts),
            )
        return AspiredRecord(
            verdicts,
            plan.default,
            dict(self.cfg.labels),
            aspired.valid,
            self._rejected(aspired, previous),
            aspired.pending,
            note,
            self.cfg.policy,
            plan.candidate,
            plan.phase,
            plan.key,
            plan.text,
        )

    def reconfigure(self, cfg: ModelConfig) -> None:
        """New version settings (policy, versions, labels, trust) from a changed config file."""
        self._at_once = (cfg.policy, cfg.labels) != (self.cfg.policy, self.cfg.labels)  # an operator's pin
        if cfg.trust != self.cfg.trust:
            # The versions in memory keep their verdict; a candidate on trial is checked anew.
            serving = set(self.record.verdicts) - {self.record.candidate}
            self.source.store.set_trust(cfg.name, cfg.trust.policy(), keep=serving)
        self.cfg = cfg
        if self.pinned is None:  # the operator's pin (admin API) holds until unpinned
            self.source.policy = VersionPolicy.parse(cfg.policy)
        self.source.versions = VersionSet.parse(cfg.versions)

    def operate(self, command: Command) -> Ack:
        """The operator's `load_version`, `unload_version`, `pin` (of `command.version`) or `unpin`."""
        verb, version = command.action, command.version
        if verb == "unpin":
            self.pinned = None
            self.source.policy = VersionPolicy.parse(self.cfg.policy)
            self._at_once = True
            return DONE
        if version is None or version < 1:
            return Ack(400, f"{verb} needs a version number, got {version!r}")
        valid = self.record.valid
        if verb in ("load_version", "pin") and version not in valid:
            return Ack(
                404,
                f"version {version} of model {self.cfg.name!r} is not a valid version in the store (valid: {valid})",
            )
        if verb == "load_version":
            self.extra.add(version)
            self.excluded.discard(version)
        elif verb == "unload_version":
            if version == self.record.default:
                return Ack(409, f"version {version} answers requests that name no version; pin another one first")
            self.excluded.add(version)
            self.extra.discard(version)
        elif verb == "pin":
            self.pinned = version
            self.source.policy = VersionPolicy.parse(f"pinned:{version}")
            self.excluded.discard(version)
            self._at_once = True  # the operator's choice: no trial
        else:
            return Ack(400, f"unknown action {verb!r}")
        return DONE

    def label_problems(self) -> list[str]:
        """Labels that name a version this decision does not load."""
        loaded = sorted(self.record.verdicts)
        return [
            f"model {self.cfg.name!r}: label {label!r} names version {version}, which is not loaded (loaded: {loaded})"
            for label, version in self.cfg.labels.items()
            if version not in self.record.verdicts
        ]

    def _rejected(self, aspired: Aspired, previous: AspiredRecord) -> dict[int, str]:
        """The store's rejections and the rollout's (one just made included), for the metadata."""
        rejected = aspired.rejected | aspired.set_aside
        tried = previous.candidate
        if tried is not None and tried not in rejected and tried in previous.verdicts:
            why = self.rollout.rejected(tried, previous.verdicts[tried].manifest)
            if why:
                rejected[tried] = why
        return rejected

    def _log_rejections(self, aspired: Aspired) -> None:
        for version, reason in aspired.rejected.items():
            if (version, reason) not in self._logged_rejections:
                self._logged_rejections.add((version, reason))
                log.error("%s:%s rejected: %s", self.cfg.name, version, reason)
                self.on_rejected(self.cfg.name)

    def _poll_failed(self, e: Exception) -> None:
        now = time.monotonic()
        if not self._failures:
            self._failed_since = now
            # Shown in the model's metadata until a poll succeeds.
            note = f"store poll failing since {time.strftime('%H:%M:%S')}: {e}"
            self.record = dataclasses.replace(self.record, note=note)
        self._failures += 1
        if self._failures == 1 or now - self._logged_at >= POLL_ERROR_LOG_S:
            self._logged_at = now
            log.error(
                "%s: store poll failed (%d in a row over %.0fs; next report in %.0fs); keeping version %s: %s",
                self.cfg.name,
                self._failures,
                now - self._failed_since,
                POLL_ERROR_LOG_S,
                self.record.version,
                e,
                exc_info=not isinstance(e, StoreError),  # a store error's message says it all
            )


class ControlLoop:
    """Polls every model and publishes each decision on the board (a thread in the supervisor)."""

    def __init__(
        self, models: Sequence[ModelControl], board: Board, interval: float, before_poll: Callable[[], None] = _nothing
    ) -> None:
        self.models = {m.cfg.name: m for m in models}  # grows and shrinks with the registry
        self.board, self.interval, self.before_poll = board, interval, before_poll
        self.discover: Callable[[], None] = _nothing  # the registry's look for models that came or went
        self.repository: Callable[[Command], Ack] = _refuse  # the registry's load/unload
        self.workers: Callable[[str], int] = _one  # worker processes that report on a model
        self._stop = threading.Event()
        self.on_polled: Callable[[ModelControl, AspiredRecord], None] = _ignore_polled  # metrics hook

    def poll_all(self) -> None:
        self.before_poll()
        self.discover()
        # Rollout commands go into the model's poll and are answered after it; the rest at once.
        rollout: dict[str, tuple[str, Command | None]] = {}  # model -> (command id, command)
        for cid, command in self.board.take_commands():
            ack = self._command(command)
            if ack is None:
                if command.model in rollout:  # two in one poll: the later one counts
                    self.board.ack(rollout[command.model][0], Ack(409, "superseded by a later command"))
                rollout[command.model] = (cid, command)
            else:
                self.board.ack(cid, ack)
        for model in list(self.models.values()):
            name = model.cfg.name
            reports: list[Mapping[str, Any]] = []
            if model.record.candidate is not None:  # evidence matters only on trial
                reports = [r.get("rollout") or {} for r in self.board.records(name, self.workers(name))]
            before = model.record
            cid, asked = rollout.get(name, ("", None))
            after = model.poll(reports, asked)
            if after != before:
                self.board.aspire(name, after)
            self.on_polled(model, before)
            if cid:
                self.board.ack(cid, DONE if after.candidate is None else Ack(409, "still on trial"))

    def _command(self, command: Command) -> Ack | None:
        """The answer to a command applied now; None for a rollout command (applied by the poll)."""
        if command.action in MODEL_ACTIONS:
            return self.repository(command)
        model = self.models.get(command.model)
        if model is None:
            return Ack(404, f"model {command.model!r} is not served")
        if command.action in ROLLOUT_ACTIONS:
            return None
        return model.operate(command)

    def publish_all(self) -> None:
        """Put every current decision on the board (once it is bound, before workers start)."""
        for model in self.models.values():
            self.board.aspire(model.cfg.name, model.record)

    def start(self) -> None:
        threading.Thread(target=self._run, name="control", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_all()
            except Exception:  # e.g. the board's process gone at shutdown
                if self._stop.is_set():
                    return
                log.exception("control loop: could not publish a decision")
