"""One inference worker: its start-up, its rounds of batches, its watchdog.

A worker serves one model (the models of the config at start-up each have workers of their own)
or, in the pool, every model added while serving. `WorkerPlan` is made by the supervisor and
pickled into each worker process; `start` runs there and never raises (a worker that cannot load
reports why on the board and answers 503).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..ipc.board import Board
from ..ipc.drain import ignore_termination
from ..ipc.messages import Listing, Outcome, Queued, Work
from ..metrics import metrics
from .loader import Loader, Servable
from .loop import CLIENT_GONE, DEADLINE, IDLE_WAIT_S, Answers, BatchCollector, Requests, answer, run_batch
from .on_demand import LOADING_WAIT_S, OnDemand
from .servables import Servables

log = logging.getLogger(__name__)


@dataclass
class WorkerPlan:
    """Everything a worker needs, picklable. A pool's `cfg` holds its batching settings."""

    cfg: ModelConfig
    board: Board
    threads: int
    watch_s: float
    log_level: str = "INFO"
    pool: bool = False
    budget: int = 0  # a pool worker's memory budget in bytes (0: every pool model loaded, kept)
    load_timeout_s: float = 10.0  # how long a request waits for a load on demand


class ModelWorker:
    """Runs in the worker process: holds each hosted model's servables and answers batches."""

    def __init__(self, plan: WorkerPlan, index: int) -> None:
        self.plan, self.cfg, self.index = plan, plan.cfg, index
        self.hosted: dict[str, Servables] = {}  # model -> its servables (replaced, never mutated)
        self._collector: BatchCollector | None = None
        self._busy_since = 0.0
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self._hosting = threading.Lock()  # the pool's watcher and the batch loop both change `hosted`
        self.listings: dict[str, Listing] = {}  # the pool's registry, as last read
        self.on_demand: OnDemand | None = None

    @classmethod
    def start(cls, plan: WorkerPlan, index: int) -> ModelWorker:
        """Set the process up and load the aspired versions. Never raises."""
        worker = cls(plan, index)
        if not logging.getLogger().handlers:  # a spawned worker starts with no logging set up
            logging.basicConfig(
                level=plan.log_level,
                format=f"%(asctime)s %(levelname)s {plan.cfg.name}[{index}] %(name)s: %(message)s",
            )
        ignore_termination()
        try:
            if plan.pool:
                if plan.budget:
                    worker.on_demand = OnDemand(worker, plan.board, index, plan.budget, plan.load_timeout_s)
                worker._follow_pool()
                threading.Thread(target=worker._watch_pool, name="pool", daemon=True).start()
            else:
                worker.hosted = {plan.cfg.name: worker._servables(plan.cfg)}
        except Exception:
            log.exception("%s: worker %s could not start", plan.cfg.name, index)
        threading.Thread(target=worker._watchdog, name="inference-watchdog", daemon=True).start()
        return worker

    # ---- what OnDemand needs (its Host) ----------------------------------------------------------
    def host(self, name: str, servables: Servables | None) -> None:
        with self._hosting:
            hosted = dict(self.hosted)
            if servables is None:
                hosted.pop(name, None)
            else:
                hosted[name] = servables
            self.hosted = hosted  # one assignment: the batch loop sees the old or the new dict

    def make_servables(self, cfg: ModelConfig) -> Servables:
        return self._servables(cfg, start=False)

    def hosted_models(self) -> dict[str, Servables]:
        return self.hosted

    def _servables(self, cfg: ModelConfig, start: bool = True) -> Servables:
        m, index = metrics(), self.index
        servables = Servables(cfg, self.plan.board, index, Loader(cfg, self.plan.threads), self.plan.watch_s)

        def on_reload(result: str, seconds: float) -> None:
            m.reloads.labels(cfg.name, result).inc()
            if result == "loaded":
                m.load.labels(cfg.name).observe(seconds)

        shown: set[int] = set()

        def on_versions(default: int | None, loaded: list[int]) -> None:
            if default is not None:
                m.version.labels(cfg.name, str(index)).set(default)
            for v in shown | set(loaded):  # 1 while loaded, 0 once unloaded
                m.loaded.labels(cfg.name, str(v), str(index)).set(1 if v in loaded else 0)
            shown.update(loaded)

        servables.on_reload, servables.on_versions = on_reload, on_versions
        if start:
            servables.start()
        return servables

    # ---- the pool: models added while serving ---------------------------------------------------
    def _follow_pool(self) -> bool:
        """Host every pool model the registry lists; a removed one unloads itself (its record).
        True while a removed one still drains (it is dropped once idle)."""
        listed = {name: listing for name, listing in self.plan.board.models().items() if listing.pool}
        self.listings = listed
        on_demand = self.on_demand
        for name, listing in listed.items():
            if name in self.hosted or listing.removed:
                continue
            if on_demand is None:
                self.host(name, self._servables(listing.config))
            elif not listing.on_demand:  # pinned in the pool: loaded now, never evicted
                self.host(name, on_demand.load_pinned(listing.config))
        if on_demand is not None:
            on_demand.listed(listed)
        pending = False
        for name, servables in list(self.hosted.items()):
            gone = name not in listed or listed[name].removed
            if gone and servables.idle:  # removed, and drained: its watcher ends with it
                servables.stop()
                self.host(name, None)
                if on_demand is not None:
                    on_demand.forget(name)
            pending = pending or (bool(gone) and name in self.hosted)
        return pending

    def _watch_pool(self) -> None:
        seen = -1
        while True:
            time.sleep(self.plan.watch_s)
            generation = self.plan.board.generation()
            if generation == seen:
                continue  # nothing new in the registry, and no removed model left to drop
            seen = generation
            try:
                if self._follow_pool():
                    seen = -1  # a removed model still drains: look again next time
            except Exception:
                seen = -1
                log.exception("pool: could not read the registry")

    # ---- the batch loop ------------------------------------------------------------------------
    def serve_round(self, requests: Requests, answers: Answers) -> None:
        """One batch (or an idle wait), with the staged versions swapped in before it."""
        if self._collector is None:
            self._collector = BatchCollector(requests, self.cfg.max_batch_size, self.cfg.batch_timeout_s)
        started = time.monotonic()
        on_demand = self.on_demand
        if on_demand is not None:
            self._collector.idle_wait_s = LOADING_WAIT_S if on_demand.busy else IDLE_WAIT_S
        items = self._collector.collect()
        if self._collector.dropped:
            self._drop(self._collector.dropped, answers)
        hosted = self.hosted
        for servables in hosted.values():
            servables.swap_if_ready()  # between batches: a batch never sees a half-changed set
        if on_demand is not None:
            for item in items:  # what this batch needs is not what room is made from
                on_demand.touch(item.work.model or self.cfg.name, started)
            ready, settled = on_demand.round(time.monotonic(), self._collector.dead)
            if settled:
                answer([s[0] for s in settled], [s[1] for s in settled], answers, (self.cfg.name, self.index))
            items = ready + items  # parked requests whose model is loaded now: they waited longest
        if items:
            results = self.handle(items)
            if on_demand is not None and on_demand.waited:
                self._cold_started(items, results, on_demand.waited)
            answered = [(item, r[1]) for item, r in zip(items, results, strict=True) if r is not None]  # not parked
            answer([a[0] for a in answered], [a[1] for a in answered], answers, (self.cfg.name, self.index))
            self._shadow(items, results)  # after the answers are on their way
        for servables in hosted.values():
            # An empty round waited with nothing queued: nothing from before it is still waiting.
            servables.drained(None if items else started)

    @staticmethod
    def _cold_started(
        items: list[Queued],
        results: list[tuple[Servable | Outcome, Outcome] | None],
        waited: dict[tuple[int, int], float],
    ) -> None:
        """Tell the requests that waited for their model's load how long (a response header)."""
        for item, result in zip(items, results, strict=True):
            wait = waited.pop((item.consumer, item.uid), None)
            if wait is not None and result is not None:
                result[1].cold_start_s = wait

    def _drop(self, dropped: list[tuple[Queued, str, Outcome]], answers: Answers) -> None:
        """Answer requests dropped unrun (their client is not waiting) and count them."""
        cancelled = metrics().cancelled
        for item, reason, _ in dropped:
            cancelled.labels(item.work.model or self.cfg.name, reason).inc()
        answer([d[0] for d in dropped], [d[2] for d in dropped], answers, (self.cfg.name, self.index))
        dropped.clear()

    def handle(self, items: list[Queued]) -> list[tuple[Servable | Outcome, Outcome] | None]:
        """(target, outcome) per request, None for one parked until its model loads; each
        model's requests run as their own batch."""
        now = self._busy_since = time.monotonic()
        results: list[tuple[Servable | Outcome, Outcome] | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.work.model or self.cfg.name, []).append(i)
        try:
            for model, indexes in groups.items():
                for i, result in zip(indexes, self._handle_model(model, [items[i] for i in indexes], now), strict=True):
                    results[i] = result
        finally:
            self._busy_since = 0.0
        return results

    def _handle_model(
        self, model: str, items: list[Queued], now: float
    ) -> list[tuple[Servable | Outcome, Outcome] | None]:
        queue_wait, batch_size, inference = self._batch_metrics(model)
        servables = self.hosted.get(model)
        if servables is None:
            listing = self.listings.get(model)
            if self.on_demand is not None and listing is not None and listing.on_demand and not listing.removed:
                refused = self.on_demand.park(listing.config, items)
                if refused is None:
                    return [None] * len(items)  # answered once the model is loaded
                return [(o, o) for o in refused]
            gone = Outcome(404, error=f"model {model!r} is not served here")
            return [(gone, gone) for _ in items]
        for item in items:
            queue_wait.observe(now - item.enqueued_at)
        works = [item.work for item in items]
        seconds: dict[int, float] = {}
        targets = [servables.resolve(item) for item in items]
        outcomes = run_batch(targets, works, servables.cfg.max_batch_size, seconds)
        outcomes = self._canary_fallback(servables, targets, works, outcomes)
        rows, took = sum(w.request.rows for w in works), time.monotonic() - now
        batch_size.observe(rows)
        inference.observe(took)
        for item, outcome in zip(items, outcomes, strict=True):  # for traces and payload logs
            outcome.queue_s, outcome.infer_s, outcome.batch_rows = now - item.enqueued_at, took, rows
        servables.last_seconds = seconds
        return list(zip(targets, outcomes, strict=True))

    def _canary_fallback(
        self, servables: Servables, targets: list[Servable | Outcome], works: list[Work], outcomes: list[Outcome]
    ) -> list[Outcome]:
        """Canary requests the candidate failed are answered by the serving version: the client
        sees no failure, the candidate's record does."""
        shadow = servables.shadow
        if shadow is None:
            return outcomes
        canary = [i for i, t in enumerate(targets) if t is shadow.candidate and works[i].version is None]
        failed = [i for i in canary if outcomes[i].status != 200]
        shadow.evidence.canary += len(canary)
        shadow.evidence.canary_failed += len(failed)
        if failed:
            again = run_batch([shadow.serving] * len(failed), [works[i] for i in failed], servables.cfg.max_batch_size)
            for i, outcome in zip(failed, again, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _shadow(self, items: list[Queued], results: list[tuple[Servable | Outcome, Outcome] | None]) -> None:
        for servables in self.hosted.values():
            shadow = servables.shadow
            if shadow is None or shadow.serving.handler is not None:
                continue  # a handler's answers are not the model's tensors: its examples decide
            done = [i for i, r in enumerate(results) if r and r[0] is shadow.serving and r[1].outputs is not None]
            if done:
                works = [items[i].work for i in done]
                outputs = [results[i][1].outputs for i in done]  # type: ignore[index]
                seconds = servables.last_seconds.get(shadow.serving.version, 0.0)
                shadow.after_batch(works, outputs, seconds)  # type: ignore[arg-type]

    def _batch_metrics(self, model: str) -> tuple[Any, Any, Any]:
        """A model's metric children, looked up once: label lookups cost more than updates."""
        found = self._children.get(model)
        if found is None:
            m = metrics()
            for reason in (CLIENT_GONE, DEADLINE):  # at 0 from the first batch: rate() has a series
                m.cancelled.labels(model, reason)
            found = self._children[model] = (
                m.queue_wait.labels(model),
                m.batch_size.labels(model),
                m.inference.labels(model),
            )
        return found

    def _watchdog(self) -> None:
        """A predict that hangs past the timeout takes the worker with it; it is restarted."""
        while True:
            time.sleep(min(1.0, self.cfg.inference_timeout_s / 4))
            busy = self._busy_since
            if busy and time.monotonic() - busy > self.cfg.inference_timeout_s:
                log.error(
                    "%s: predict ran over %ss; recycling this worker", self.cfg.name, self.cfg.inference_timeout_s
                )
                os._exit(70)
