"""The servables of one model in one worker: every loaded version, swapped in between batches.

The supervisor decides which versions a model loads and which one answers requests that name
none, and publishes that on the board with each version's verdict. A watcher thread here reads
the decision (off the request path), loads the versions it lacks (the loader) and stages them;
the batch loop applies the staged state between batches (`swap_if_ready`), so a batch never sees
a half-changed set. Availability is preserved: the old default keeps answering until the new one
is ready; a version that leaves the decision drains (requests queued before it left are
answered by it) and is dropped after. A version that fails here is remembered with its reason
until its files change.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import ModelConfig
from ..handlers import handler_signature
from ..ipc.board import Board
from ..ipc.messages import AspiredRecord, Outcome, Queued, Verdict, WorkerRecord
from .loader import PLATFORMS, Loader, Rejected, Servable, memory_problem
from .shadow import Shadow

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS after an unload (glibc keeps them otherwise, and a
    worker's resident memory would creep up by each version's runtime, reload after reload)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def _signature(servable: Servable) -> dict[str, Any]:
    """What clients send and get: the handler's declared tensors, else the model's own."""
    if servable.handler is not None:
        return handler_signature(type(servable.handler.handler))
    return servable.manifest.signature.to_dict()


def _ignore_reload(result: str, seconds: float) -> None:
    pass


def _ignore_versions(default: int | None, loaded: list[int]) -> None:
    pass


class Servables:
    """One model in one worker process."""

    def __init__(self, cfg: ModelConfig, board: Board, worker: int, loader: Loader, watch_s: float) -> None:
        self.cfg, self.board, self.worker, self.loader, self.watch_s = cfg, board, worker, loader, watch_s
        self.loaded: dict[int, Servable] = {}  # what requests may use now (batch loop's view)
        self.default: int | None = None
        self._draining: dict[int, tuple[Servable, float]] = {}  # left the decision at (monotonic)
        self._staged: dict[int, Servable] = {}  # loaded by the watcher, not yet in service
        self._lock = threading.Lock()  # guards _staged and _aspired between watcher and loop
        self._failed: dict[int, tuple[object, str]] = {}  # version -> (its files' stats, reason)
        self._aspired = AspiredRecord()
        self._applied: AspiredRecord | None = None
        self.shadow: Shadow | None = None  # the candidate's trial, when one runs
        self.last_seconds: dict[int, float] = {}  # compute time per version in the last batch
        self._former: int | None = None  # the default before the last change
        self._stopped = False
        self._read_generation = -1  # the board's generation at the last read
        self._canary_credit = 0.0
        self._reported: dict[str, Any] = {}
        # Metrics hooks: a load's result (loaded|rejected|failed) and seconds; versions in service.
        self.on_reload: Callable[[str, float], None] = _ignore_reload
        self.on_versions: Callable[[int | None, list[int]], None] = _ignore_versions

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Load the aspired versions now (the worker is not ready before), then watch."""
        self.load_now()
        self.watch()

    def load_now(self) -> None:
        """Load and put in service the aspired versions, before the batch loop sees this."""
        self._publish("loading")
        self.refresh()
        self.swap_if_ready()
        self._publish()

    def watch(self) -> None:
        """From now on a watcher thread follows the supervisor's decisions."""
        threading.Thread(target=self._watch, name=f"watch-{self.cfg.name}", daemon=True).start()

    def stop(self) -> None:
        """The watcher ends (a pool model that left: a new Servables takes over if it returns)."""
        self._stopped = True

    @property
    def idle(self) -> bool:
        """Nothing loaded and nothing draining: safe to drop."""
        return not self.loaded and not self._draining

    def _watch(self) -> None:
        while not self._stopped:  # a daemon thread: it ends with its worker process, or at stop()
            time.sleep(self.watch_s)
            try:
                self.watch_once()
            except Exception:  # the watcher must outlive any surprise (e.g. the board's process gone)
                log.exception("%s: could not read the supervisor's decision; keeping %s", self.cfg.name, self.version)

    def watch_once(self) -> None:
        """Read the decision when the supervisor wrote one since the last read, or while a trial
        runs (its evidence goes out from here); an idle worker otherwise reads nothing."""
        generation = self.board.generation()
        if generation == self._read_generation and self.shadow is None:
            return
        self._read_generation = generation  # before the read: a write during it is read next time
        try:
            self.refresh()
        except Exception:
            self._read_generation = -1  # read again next time, as if nothing had been read
            raise

    @property
    def version(self) -> int | None:
        return self.default

    @property
    def current(self) -> Servable | None:
        return self.loaded.get(self.default) if self.default is not None else None

    # ---- the watcher: read the decision, load what is missing ------------------------------
    def refresh(self) -> None:
        aspired = self.board.aspired(self.cfg.name) or AspiredRecord()
        for version, verdict in sorted(aspired.verdicts.items(), key=lambda kv: kv[0] != aspired.default):
            have = self.loaded.get(version) or self._staged.get(version)
            if have is not None and have.stats == verdict.stats:
                continue  # unchanged versions are never reloaded
            if not self._known_failure(verdict):
                self._load(verdict)
        changed = aspired != self._aspired
        if changed:  # an unchanged decision stays the same object: swap_if_ready has nothing to do
            with self._lock:
                self._aspired = aspired
        shadow = self.shadow
        if changed or (shadow is not None and shadow.evidence.to_dict() != self._reported):
            self._publish()  # the evidence reaches the supervisor at most once per watch

    def _known_failure(self, verdict: Verdict) -> bool:
        failed = self._failed.get(verdict.version)
        return failed is not None and failed[0] == verdict.stats

    def _load(self, verdict: Verdict) -> None:
        started = time.perf_counter()
        version = verdict.version
        try:
            anchor = self.current or next(iter(self.loaded.values()), None)
            if anchor is not None:
                problem = memory_problem(verdict.manifest, anchor.artifact, anchor.device)
                if problem:
                    raise Rejected(problem)
            servable = self.loader.load(verdict)
        except Rejected as e:
            self._failed[version] = (verdict.stats, str(e))
            log.error("%s:%s rejected, keeping %s: %s", self.cfg.name, version, sorted(self.loaded), e)
            self.on_reload("rejected", time.perf_counter() - started)
            self._publish()
            return
        except Exception as e:  # a loader crash must not take the worker down
            self._failed[version] = (verdict.stats, f"load failed: {type(e).__name__}: {e}")
            log.exception("%s:%s failed to load, keeping %s", self.cfg.name, version, sorted(self.loaded))
            self.on_reload("failed", time.perf_counter() - started)
            self._publish()
            return
        self._failed.pop(version, None)
        with self._lock:
            self._staged[version] = servable
        self.on_reload("loaded", servable.load_seconds)

    # ---- the batch loop, between batches -------------------------------------------------------
    def swap_if_ready(self) -> bool:
        """Apply the staged decision; True when what serves changed."""
        with self._lock:
            aspired, staged = self._aspired, self._staged
            if aspired is self._applied and not staged:
                return False
            self._staged = {}
        self._applied = aspired
        available = {**self.loaded, **staged}
        loaded = {v: available[v] for v in aspired.verdicts if v in available}
        default = aspired.default if aspired.default in loaded else None
        if default is None and self.default in available and not aspired.removed:
            default = self.default  # the new default is not ready: the old one keeps answering
            loaded[default] = available[default]
        now = time.monotonic()
        for version, servable in self.loaded.items():
            if version not in loaded:
                self._draining[version] = (servable, now)
        changed = (default, loaded.keys()) != (self.default, self.loaded.keys()) or bool(staged)
        if default != self.default:
            log.info("%s: now serving version %s by default (was %s)", self.cfg.name, default, self.default)
            self._former = self.default
        self.loaded, self.default = loaded, default
        self._start_trial(aspired)
        self._publish()
        self.on_versions(default, sorted(loaded))
        return changed

    def _start_trial(self, aspired: AspiredRecord) -> None:
        serving, candidate = self.current, self.loaded.get(aspired.candidate or 0)
        if serving is None or candidate is None or not aspired.rollout_key:
            self.shadow = None
            return
        if self.shadow is None or self.shadow.evidence.key != aspired.rollout_key:
            self.shadow = Shadow(self.cfg.rollout, aspired.rollout_key, serving, candidate)
            self.shadow.run_examples()

    def drained(self, empty_since: float | None) -> None:
        """Drop draining versions no queued request can still ask for: the queue was seen empty
        from `empty_since` (an idle round), or they left longer ago than the inference timeout,
        after which a request queued before that has been answered 504 already."""
        now = time.monotonic()
        gone = [
            v
            for v, (_, since) in self._draining.items()
            if (empty_since is not None and empty_since > since) or now - since > self.cfg.inference_timeout_s
        ]
        for version in gone:
            del self._draining[version]
            log.info("%s: version %s unloaded", self.cfg.name, version)
        if gone:
            gc.collect()  # unload after the switch: availability-preserving
            release_free_memory()

    def resolve(self, item: Queued) -> Servable | Outcome:
        """The servable that answers this request, or the answer saying why none does."""
        work, name = item.work, self.cfg.name
        version = work.version
        if work.label is not None:
            version = self._aspired.labels.get(work.label)
            if version is None:
                return Outcome(404, error=f"model {name!r} has no label {work.label!r}")
        if version is None and self.current is None and self._aspired.removed:
            version = self._former  # queued before the model left: its last default answers
        if version is None:
            servable = self.current
            shadow = self.shadow
            if shadow is not None and self._aspired.phase == "canary" and work.label is None:
                self._canary_credit += self.cfg.rollout.canary_share  # an even spread, no random draw
                if self._canary_credit >= 1:
                    self._canary_credit -= 1
                    return shadow.candidate
            if servable is None:
                return Outcome(503, error=f"model {name!r} has no ready version: {self.unavailable_reason()}")
            return servable
        if version in self.loaded:
            return self.loaded[version]
        draining = self._draining.get(version)
        if draining is not None and item.enqueued_at <= draining[1]:
            return draining[0]  # asked for before it left: answered
        if version in self._aspired.verdicts:
            failed = self._failed.get(version)
            why = f"failed to load: {failed[1]}" if failed else "is loading"
            return Outcome(503, error=f"version {version} of model {name!r} {why}")
        if self._aspired.removed:
            return Outcome(404, error=f"model {name!r} is not served: {self._aspired.removed}")
        via = f" (label {work.label!r})" if work.label is not None else ""
        return Outcome(
            404, error=f"version {version}{via} of model {name!r} is not loaded (loaded: {sorted(self.loaded)})"
        )

    # ---- status board ---------------------------------------------------------------------
    def _publish(self, state: str | None = None) -> None:
        if self._stopped:
            return  # unloaded (evicted, or its model left): the record is no longer its own
        cur, aspired = self.current, self._aspired
        rejected = {str(v): r for v, r in aspired.rejected.items()}
        rejected |= {str(v): r for v, (_, r) in self._failed.items()}
        reason = aspired.note
        if cur is None and not reason:
            reason = self.unavailable_reason()
        states = {}
        for v in aspired.verdicts:
            failed = self._failed.get(v)
            states[str(v)] = "ready" if v in self.loaded else (f"failed: {failed[1]}" if failed else "loading")
        record = WorkerRecord(
            state=state or ("ready" if cur else "unavailable"),
            version=cur.version if cur else None,
            versions=aspired.valid,
            rejected=rejected,
            reason=reason,
            loaded=states,
            labels=dict(aspired.labels),
            servables={str(v): s.describe() for v, s in self.loaded.items()},
            signatures={str(v): _signature(s) for v, s in self.loaded.items()},
            platforms={str(v): PLATFORMS[s.artifact] for v, s in self.loaded.items()},
            candidate=aspired.candidate,
            phase=aspired.phase,
            rollout_status=aspired.rollout,
        )
        if self.shadow is not None:
            self._reported = record["rollout"] = self.shadow.evidence.to_dict()
        elif aspired.candidate is not None and aspired.candidate in self._failed:
            # The trial cannot start here: say why, for the supervisor to reject the candidate.
            record["rollout"] = {"key": aspired.rollout_key, "load_failed": self._failed[aspired.candidate][1]}
        if cur is not None:
            record["servable"] = cur.describe()
            record["signature"] = _signature(cur)
            record["platform"] = PLATFORMS[cur.artifact]
        self.board.publish(self.cfg.name, self.worker, record)

    def unavailable_reason(self) -> str:
        aspired = self._aspired
        if self._failed:
            v, (_, r) = max(self._failed.items())
            return f"version {v} rejected: {r}"
        if aspired.rejected:
            v = max(aspired.rejected)
            return f"version {v} rejected: {aspired.rejected[v]}"
        if aspired.pending:
            return f"version(s) {aspired.pending} still arriving"
        return f"no servable version matches policy {aspired.policy}"
