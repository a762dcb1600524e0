"""The pool's models within a memory budget: loaded on their first request, the least recently
used idle one unloaded when a load would pass the budget (docs/model-control.md).

Runs in a pool worker, beside its batch loop. A request for a model that is not loaded is parked
here (not answered, not lost) while one loader thread loads the model; between batches the loop
calls `round`, which moves a finished load into service and runs its parked requests, answers
503 + Retry-After to those that waited `load_timeout_s`, and drops those whose client left. The
loop is the only thread that evicts, so a batch never loses its model halfway.

What a model costs is measured, not guessed: the worker's private memory before and after the
load (one load at a time, so the difference is that model's), floored at its artifact's size.
The files were verified once by the supervisor; a reload after an eviction only stats them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import ModelConfig
from ..ipc.board import Board
from ..ipc.messages import Listing, Outcome, Queued, WorkerRecord
from ..metrics import metrics
from ..resources import private_bytes
from .servables import Servables, release_free_memory

log = logging.getLogger(__name__)
LOADING_WAIT_S = 0.005  # the batch loop's idle wait while a load runs: a cold start ends sooner
Dead = Callable[[Queued], "tuple[str, Outcome] | None"]  # why a parked request is not waited for
AVAILABLE = "available (not loaded): loads on its first request"
MiB = 1 << 20
TRIM_EVERY_S = 1.0


class Host(Protocol):
    """The worker side this needs (ModelWorker): its hosted models, and how to make one."""

    def host(self, name: str, servables: Servables | None) -> None: ...

    def make_servables(self, cfg: ModelConfig) -> Servables: ...

    def hosted_models(self) -> dict[str, Servables]: ...


@dataclass
class Cold:
    """A model being loaded, and the requests waiting for it."""

    cfg: ModelConfig
    parked: list[Queued] = field(default_factory=list)
    parked_at: list[float] = field(default_factory=list)
    servables: Servables | None = None  # set by the loader thread when done
    charge: int = 0
    error: str = ""
    started: float = 0.0  # 0: waiting for room


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


class OnDemand:
    def __init__(self, host: Host, board: Board, worker: int, budget: int, load_timeout_s: float) -> None:
        self.host, self.board, self.worker = host, board, worker
        self.budget, self.load_timeout_s = budget, load_timeout_s
        self.charges: dict[str, int] = {}  # loaded model -> bytes it costs
        self.costs: dict[str, int] = {}  # what each model took when last loaded (kept on eviction)
        self.waited: dict[tuple[int, int], float] = {}  # (consumer, uid) run after a load -> its wait
        self.last_used: dict[str, float] = {}
        self.pinned: set[str] = set()  # loaded at once, never evicted
        self.cold: dict[str, Cold] = {}  # loading or waiting for room (batch loop's)
        self.refused: dict[str, tuple[int | None, str]] = {}  # too large: (its version, why)
        self._announced: set[str] = set()
        self._trimmed_at = 0.0
        self._runtimes: set[str] = set()  # artifact formats loaded once here (set up, paid for)
        self._loads: queue.SimpleQueue[Cold] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._measure = threading.Lock()  # one load at a time: its memory is its own
        threading.Thread(target=self._load_loop, name="on-demand-loader", daemon=True).start()
        metrics().pool_budget.labels(str(worker)).set(budget)

    @property
    def used(self) -> int:
        return sum(self.charges.values())

    @property
    def busy(self) -> bool:
        """A load runs or requests wait for one: the batch loop should look again soon."""
        return bool(self.cold)

    # ---- the registry (the pool's watcher thread) ------------------------------------------------
    def listed(self, listings: dict[str, Listing]) -> None:
        """Say `available` for each on-demand model not loaded yet (what readiness reads)."""
        for name, listing in listings.items():
            if listing.on_demand and not listing.removed and name not in self._announced:
                self._announced.add(name)
                if name not in self.host.hosted_models():
                    self._publish(name, "available", AVAILABLE)
        self._announced &= set(listings)

    def load_pinned(self, cfg: ModelConfig) -> Servables:
        """A pool model that is never evicted: loaded now, charged like the others."""
        servables, self.charges[cfg.name] = self._measured(cfg, lambda s: s.start())
        self.pinned.add(cfg.name)
        return servables

    def _measured(self, cfg: ModelConfig, load: Callable[[Servables], None]) -> tuple[Servables, int]:
        """Load one model (one load at a time) and what it costs: what the worker's private
        memory grew by, at least its artifact's size."""
        with self._measure:
            before = private_bytes() or 0
            servables = self.host.make_servables(cfg)
            load(servables)
            grew = max(0, (private_bytes() or 0) - before)
        return servables, max(self._first_of_its_runtime(servables, grew), self._loaded_size(servables))

    # ---- the batch loop -------------------------------------------------------------------------
    def touch(self, name: str, now: float) -> None:
        self.last_used[name] = now

    def park(self, cfg: ModelConfig, items: list[Queued]) -> list[Outcome] | None:
        """Hold requests for a model that is not loaded and start its load; None when parked,
        else their answers (the model is too large for the budget)."""
        name = cfg.name
        if name in self.refused:
            version, why = self.refused[name]
            record = self.board.aspired(name)
            if record is not None and record.default == version:
                return [Outcome(507, error=why) for _ in items]
            del self.refused[name]  # a new version: it may fit
        cold = self.cold.get(name)
        if cold is None:
            cold = self.cold[name] = Cold(cfg)
            metrics().cold_starts.labels(name).inc()
        now = time.monotonic()
        cold.parked.extend(items)
        cold.parked_at.extend([now] * len(items))
        return None

    def round(self, now: float, dead: Dead) -> tuple[list[Queued], list[tuple[Queued, Outcome]]]:
        """Between batches: loads that finished go into service, loads waiting for room start.
        Returns the parked requests to run now (their model is loaded), and those answered here
        (timed out, cancelled, failed to load) with their answers."""
        run: list[Queued] = []
        answered: list[tuple[Queued, Outcome]] = []
        while True:
            try:
                name = self._done.get_nowait()
            except queue.Empty:
                break
            ready, failed = self._finish(name, now)
            run += ready
            answered += failed
        for name, cold in list(self.cold.items()):
            if not cold.started:
                refused = self._start(name, cold, now)
                if refused:
                    answered += refused
                    continue
            answered += self._expire(cold, now, dead)
        return run, answered

    def _start(self, name: str, cold: Cold, now: float) -> list[tuple[Queued, Outcome]]:
        """Start the load when there is room (or can be made); answers if it never fits."""
        need = self._estimate(name)
        if need > self.budget:
            size, budget = _mib(need), _mib(self.budget)
            self._refuse(name, f"model {name!r} needs at least {size}, more than the memory budget of {budget}")
            return [(item, Outcome(507, error=self.refused[name][1])) for item in cold.parked]
        if self._make_room(need, keep=name):  # else every loaded model is pinned: next round
            cold.started = now
            self._publish(name, "loading", "loading on demand")
            self._loads.put(cold)
        return []

    def _finish(self, name: str, now: float) -> tuple[list[Queued], list[tuple[Queued, Outcome]]]:
        cold = self.cold.pop(name, None)
        if cold is None:
            return [], []
        servables = cold.servables
        if cold.charge > self.budget and servables is not None:
            servables.stop()
            size, budget = _mib(cold.charge), _mib(self.budget)
            self._refuse(name, f"model {name!r} takes {size} loaded, more than the memory budget of {budget}")
            return [], [(item, Outcome(507, error=self.refused[name][1])) for item in cold.parked]
        if servables is None or servables.current is None:
            why = cold.error or (servables.unavailable_reason() if servables else "load failed")
            log.error("%s: could not load on demand: %s", name, why)
            error = f"model {name!r} could not load: {why}"
            return [], [(item, Outcome(503, error=error)) for item in cold.parked]
        self.charges[name] = self.costs[name] = cold.charge
        self.last_used[name] = now
        self.host.host(name, servables)
        servables.watch()
        self._make_room(0, keep=name)  # it took more than estimated: others make way, not it
        m = metrics()
        m.pool_used.labels(str(self.worker)).set(self.used)
        for item, at in zip(cold.parked, cold.parked_at, strict=True):
            m.cold_wait.labels(name).observe(now - at)
            self.waited[(item.consumer, item.uid)] = now - at
        took, size, used, budget = (
            time.monotonic() - cold.started,
            _mib(cold.charge),
            _mib(self.used),
            _mib(self.budget),
        )
        log.info("%s: loaded on demand in %.3fs (%s; pool %s of %s)", name, took, size, used, budget)
        return list(cold.parked), []

    def _expire(self, cold: Cold, now: float, dead: Dead) -> list[tuple[Queued, Outcome]]:
        out: list[tuple[Queued, Outcome]] = []
        keep: list[Queued] = []
        keep_at: list[float] = []
        for item, at in zip(cold.parked, cold.parked_at, strict=True):
            why = dead(item)
            if why is not None:
                out.append((item, why[1]))
            elif now - at >= self.load_timeout_s:
                retry = max(1, round(self.load_timeout_s))
                error = f"model {cold.cfg.name!r} is still loading after {self.load_timeout_s:g}s; retry in {retry}s"
                out.append((item, Outcome(503, error=error, retry_after_s=retry)))
            else:
                keep.append(item)
                keep_at.append(at)
        cold.parked, cold.parked_at = keep, keep_at
        return out

    def _estimate(self, name: str) -> int:
        """What it took when last loaded, else its smallest artifact (a lower bound: a session
        holds the weights at least once)."""
        if name in self.costs:
            return self.costs[name]
        record = self.board.aspired(name)
        verdict = record.verdict if record is not None else None
        if verdict is None:
            return 0
        sizes = [a.size for a in verdict.manifest.artifacts]
        return min(sizes) if sizes else 0

    def _make_room(self, need: int, keep: str) -> bool:
        hosted = self.host.hosted_models()
        while self.used + need > self.budget:
            idle = [
                n for n in self.charges if n not in self.pinned and n != keep and n not in self.cold and n in hosted
            ]
            if not idle:
                return False
            self.evict(min(idle, key=lambda n: self.last_used.get(n, 0.0)))
        return True

    def evict(self, name: str, why: str = "least recently used") -> None:
        charge = self.charges.pop(name, 0)
        self.last_used.pop(name, None)
        servables = self.host.hosted_models().get(name)
        if servables is not None:
            servables.stop()
        self.host.host(name, None)
        self._publish(name, "available", f"{AVAILABLE} (unloaded: {why})")
        # The session goes with its last reference; a full gc.collect() here would stall the
        # batch loop for every model in turn. Freed heap goes back to the OS at most once a second.
        now = time.monotonic()
        if now - self._trimmed_at >= TRIM_EVERY_S:
            self._trimmed_at = now
            release_free_memory()
        m = metrics()
        m.evictions.labels(name).inc()
        m.pool_used.labels(str(self.worker)).set(self.used)
        freed, used, budget = _mib(charge), _mib(self.used), _mib(self.budget)
        log.info("%s: unloaded (%s) to make room: %s freed, pool %s of %s", name, why, freed, used, budget)

    def forget(self, name: str) -> None:
        """A model that left the registry: nothing of it is kept."""
        self.charges.pop(name, None)
        self.costs.pop(name, None)
        self.last_used.pop(name, None)
        self.refused.pop(name, None)
        self.pinned.discard(name)

    def _refuse(self, name: str, why: str) -> None:
        record = self.board.aspired(name)
        self.refused[name] = (record.default if record is not None else None, why)
        self.cold.pop(name, None)
        log.error("%s: not loaded: %s", name, why)
        self._publish(name, "unavailable", why)

    def _publish(self, name: str, state: str, reason: str) -> None:
        self.board.publish(name, self.worker, WorkerRecord(state=state, reason=reason, loaded={}))

    # ---- the loader thread ----------------------------------------------------------------------
    def _load_loop(self) -> None:
        while True:
            cold = self._loads.get()
            try:
                cold.servables, cold.charge = self._measured(cold.cfg, lambda s: s.load_now())
            except Exception as e:  # a crash here must not stop every later load
                log.exception("%s: on-demand load failed", cold.cfg.name)
                cold.error = f"{type(e).__name__}: {e}"
            self._done.put(cold.cfg.name)

    def _first_of_its_runtime(self, servables: Servables, grew: int) -> int:
        """What the load grew by, except for the first model of a runtime (onnxruntime, torch):
        that load also set the runtime up (about 10 MiB for onnxruntime), which stays whatever
        is evicted, so it is the worker's fixed overhead, not the model's."""
        current = servables.current
        if current is None or current.artifact in self._runtimes:
            return grew
        self._runtimes.add(current.artifact)
        log.info(
            "%s runtime set up with the first %s model: %s, the pool worker's fixed overhead",
            current.artifact,
            current.artifact,
            _mib(grew),
        )
        return 0

    @staticmethod
    def _loaded_size(servables: Servables) -> int:
        current = servables.current
        if current is None:
            return 0
        artifact: Any = current.manifest.artifact(current.artifact)
        return int(artifact.size) if artifact is not None else 0
