"""The LitAPI of one model, pickled into each of its worker processes.

`setup` starts the manager (and never raises); `handle` answers a batch through the current
servable. The HTTP side of the same model is its spec (`spec.py`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request

from .batching import Outcome, RowBatchLoop, Work, run_batch
from .board import Board
from .config import ModelConfig
from .drain import ignore_termination
from .manager import ServableManager
from .metrics import metrics
from .spec import V2InferSpec, check_api_key

log = logging.getLogger(__name__)


class ModelAPI(ls.LitAPI):  # type: ignore[misc]
    """One model. Pickled into each of its worker processes, where `setup` runs."""

    def __init__(
        self,
        cfg: ModelConfig,
        store_root: Path,
        poll_interval: float,
        api_servers: int,
        threads: int,
    ) -> None:
        super().__init__(
            max_batch_size=cfg.max_batch_size,
            batch_timeout=cfg.batch_timeout_s,
            spec=V2InferSpec(cfg, api_servers),
            loop=RowBatchLoop(),
        )
        self.cfg, self.store_root, self.poll_interval, self.threads = (
            cfg,
            store_root,
            poll_interval,
            threads,
        )
        self.board: Board | None = None  # set by the server before workers start
        self.api_key = ""
        self.log_level = "INFO"
        self.manager: ServableManager | None = None
        self._busy_since = 0.0

    def setup(self, device: Any) -> None:
        """Never raises: a raising setup makes LitServe shut the whole server down."""
        worker = int(os.environ.get("LITSERVE_WORKER_ID", "0"))
        if not logging.getLogger().handlers:  # a spawned worker starts with no logging set up
            logging.basicConfig(
                level=self.log_level,
                format=f"%(asctime)s %(levelname)s {self.cfg.name}[{worker}] %(name)s: %(message)s",
            )
        assert self.board is not None
        ignore_termination()
        m = metrics()
        cfg = self.cfg
        try:
            self.manager = ServableManager(cfg, self.store_root, self.poll_interval, self.board, worker, self.threads)

            def on_reload(result: str, seconds: float) -> None:
                m.reloads.labels(cfg.name, result).inc()
                if result == "loaded":
                    m.load.labels(cfg.name).observe(seconds)

            def on_swap(version: int) -> None:
                m.version.labels(cfg.name, str(worker)).set(version)

            self.manager.on_reload, self.manager.on_swap = on_reload, on_swap
            self.manager.start()
        except Exception:
            log.exception("%s: worker %s could not start its manager", self.cfg.name, worker)
        threading.Thread(target=self._watchdog, name="inference-watchdog", daemon=True).start()

    def handle(self, works: list[Work], enqueued_at: list[float]) -> list[Outcome]:
        manager = self.manager
        servable = manager.current if manager else None
        why_not = "" if servable else (manager.unavailable_reason() if manager else "its worker failed to start")
        now = self._busy_since = time.monotonic()
        queue_wait, batch_size, inference = self._batch_metrics()
        for t in enqueued_at:
            queue_wait.observe(now - t)
        try:
            outcomes = run_batch(servable, self.cfg.name, works, self.cfg.max_batch_size, why_not)
        finally:
            self._busy_since = 0.0
        batch_size.observe(sum(w.request.rows for w in works))
        inference.observe(time.monotonic() - now)
        return outcomes

    @functools.cache  # noqa: B019 (one LitAPI per worker process, alive as long as it)
    def _batch_metrics(self) -> tuple[Any, Any, Any]:
        """This model's metric children, looked up once: label lookups cost more than updates."""
        m, name = metrics(), self.cfg.name
        return m.queue_wait.labels(name), m.batch_size.labels(name), m.inference.labels(name)

    def _watchdog(self) -> None:
        """A predict that hangs past the timeout takes the worker with it; LitServe restarts it."""
        while True:
            time.sleep(min(1.0, self.cfg.inference_timeout_s / 4))
            busy = self._busy_since
            if busy and time.monotonic() - busy > self.cfg.inference_timeout_s:
                log.error(
                    "%s: predict ran over %ss; recycling this worker",
                    self.cfg.name,
                    self.cfg.inference_timeout_s,
                )
                os._exit(70)

    async def authorize(self, request: Request) -> None:
        """The API key guard LitServe puts on this model's FastAPI routes (async: FastAPI runs a
        sync dependency in a thread pool, a thread hop per request)."""
        check_api_key(self.api_key, request)

    # LitServe's hooks; the custom loop calls `handle` instead of these.
    def decode_request(self, request: Any) -> Any:
        return request

    def predict(self, x: Any) -> Any:
        return x

    def encode_response(self, output: Any) -> Any:
        return output
