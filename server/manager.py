"""Manager: keeps one model's servable in a worker current, with an availability-preserving swap.

A background thread polls the source; when the aspired version differs from the one serving it
loads and validates it (the loader), and hands it over. The worker's batch loop takes it between
batches (`swap_if_ready`), so a batch never mixes versions; the old version is dropped only after
the new one serves. A version that fails is remembered with its reason until its files change.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model_store import StoreError
from model_store.manifest import Manifest
from model_store.policy import VersionPolicy
from model_store.s3 import open_store

from .board import Board, WorkerRecord
from .config import ModelConfig
from .loader import PLATFORMS, Loader, Rejected, Servable
from .resources import available_memory
from .source import Aspired, StoreSource

log = logging.getLogger(__name__)

# A bucket's mirror keeps, per model, the versions the policy prefers up to this many servable
# ones: the one serving and a fallback that a rollback can swap to without a download.
MIRROR_KEEP = 2
# While the store cannot be read, say so at the first failed poll and then at most this often.
POLL_ERROR_LOG_S = 60.0


def memory_problem(folder: Path, manifest: Manifest, fmt: str, device: str) -> str | None:
    """Refuse a second copy that would not fit: about 3x the artifact (file, runtime, arena)."""
    artifact = manifest.artifact(fmt)
    need = 3 * (artifact.size if artifact else 0)
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if need > free:
            return f"not enough GPU memory on {device}: need ~{need >> 20} MiB, {free >> 20} MiB free"
        return None
    available = available_memory()
    if available is not None and need > available:
        return f"not enough memory: need ~{need >> 20} MiB, {available >> 20} MiB available"
    return None


def _ignore(result: str, seconds: float) -> None:
    pass


def _ignore_version(version: int) -> None:
    pass


class ServableManager:
    """One model in one worker process."""

    def __init__(
        self,
        cfg: ModelConfig,
        store_root: Path,
        poll_interval: float,
        board: Board,
        worker: int,
        threads: int,
    ) -> None:
        self.cfg, self.worker, self.board = cfg, worker, board
        self.poll_interval = poll_interval
        # A folder store, or a bucket's store when store_root is its mirror (see model_store.s3).
        self.store = open_store(store_root, trust_pickle=cfg.trust_pickle, keep=MIRROR_KEEP, policy=cfg.policy)
        self.source = StoreSource(self.store, cfg.name, VersionPolicy.parse(cfg.policy))
        self.loader = Loader(store_root, cfg, self.store.hashes, threads)
        self.current: Servable | None = None
        self._next: Servable | None = None
        self._failed: dict[int, tuple[object, str]] = {}
        self._logged_rejections: set[tuple[int, str]] = set()
        self._last: Aspired = Aspired(None)
        self._note = ""
        self._thread: threading.Thread | None = None
        self._poll_failures = 0
        self._poll_failed_since = 0.0
        self._poll_logged_at = 0.0
        # Metrics hook: called with loaded|rejected|failed and the seconds it took.
        self.on_reload: Callable[[str, float], None] = _ignore
        self.on_swap: Callable[[int], None] = _ignore_version

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Load the aspired version now (the worker is not ready before), then watch."""
        self._publish("loading")
        self._poll()  # an unreachable store must not stop the worker: the watcher retries
        self.swap_if_ready()
        self._publish()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{self.cfg.name}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:  # a daemon thread: it ends with its worker process
            time.sleep(self.poll_interval)
            self._poll()

    def _poll(self) -> None:
        """One refresh; failures keep the served version and are logged without flooding the log."""
        try:
            self.refresh()
        except Exception as e:  # the watcher must outlive any surprise in the store
            now = time.monotonic()
            if not self._poll_failures:
                self._poll_failed_since = now
                # Shown in the model's metadata until a poll succeeds (refresh recomputes the note).
                self._note = f"store poll failing since {time.strftime('%H:%M:%S')}: {e}"
                self._publish()
            self._poll_failures += 1
            if self._poll_failures == 1 or now - self._poll_logged_at >= POLL_ERROR_LOG_S:
                self._poll_logged_at = now
                log.error(
                    "%s: store poll failed (%d in a row over %.0fs; next report in %.0fs); keeping version %s: %s",
                    self.cfg.name,
                    self._poll_failures,
                    now - self._poll_failed_since,
                    POLL_ERROR_LOG_S,
                    self.version,
                    e,
                    exc_info=not isinstance(e, StoreError),  # a store error's message says it all
                )
            return
        if self._poll_failures:
            log.warning(
                "%s: store readable again after %d failed poll(s) over %.1fs",
                self.cfg.name,
                self._poll_failures,
                time.monotonic() - self._poll_failed_since,
            )
            self._poll_failures = 0

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    # ---- one poll -------------------------------------------------------------------------
    def refresh(self) -> None:
        aspired = self.source.poll()
        self._log_rejections(aspired)
        target = aspired.version
        pending_next = self._next.version if self._next else None
        note = ""
        if target is None and self.current is not None and self.current.version not in aspired.valid:
            note = f"version {self.current.version} left the store and no valid version remains; keeping it in memory"
            if note != self._note:
                log.warning("%s: %s", self.cfg.name, note)
        if target is not None and target not in (self.version, pending_next) and not self._known_failure(target):
            self._load(target)
        changed = (aspired, note) != (self._last, self._note)
        self._last, self._note = aspired, note
        if changed:
            self._publish()

    def _known_failure(self, version: int) -> bool:
        failed = self._failed.get(version)
        return failed is not None and failed[0] is self.source.fingerprint(version)

    def _load(self, version: int) -> None:
        started = time.perf_counter()
        fingerprint = self.source.fingerprint(version)
        try:
            if self.current is not None:
                folder = self.store.path(self.cfg.name, version)
                manifest = Manifest.load(folder)
                problem = memory_problem(folder, manifest, self.current.artifact, self.current.device)
                if problem:
                    raise Rejected(problem)
            servable = self.loader.load(version)
        except Rejected as e:
            self._failed[version] = (fingerprint, str(e))
            log.error("%s:%s rejected, keeping %s: %s", self.cfg.name, version, self.version, e)
            self.on_reload("rejected", time.perf_counter() - started)
            self._publish()
            return
        except Exception as e:  # a loader crash must not take the worker down
            self._failed[version] = (fingerprint, f"load failed: {type(e).__name__}: {e}")
            log.exception("%s:%s failed to load, keeping %s", self.cfg.name, version, self.version)
            self.on_reload("failed", time.perf_counter() - started)
            self._publish()
            return
        self._next = servable
        self.on_reload("loaded", servable.load_seconds)

    def _log_rejections(self, aspired: Aspired) -> None:
        for version, reason in aspired.rejected.items():
            if (version, reason) not in self._logged_rejections:
                self._logged_rejections.add((version, reason))
                log.error("%s:%s rejected: %s", self.cfg.name, version, reason)
                self.on_reload("rejected", 0.0)

    # ---- called by the batch loop between batches ------------------------------------------
    def swap_if_ready(self) -> bool:
        new = self._next
        if new is None:
            return False
        old, self.current, self._next = self.current, new, None
        log.info(
            "%s: now serving version %s (was %s)",
            self.cfg.name,
            new.version,
            old.version if old else None,
        )
        self._publish()
        self.on_swap(new.version)
        del old  # unload after the switch: availability-preserving
        gc.collect()
        return True

    # ---- status board ---------------------------------------------------------------------
    def _publish(self, state: str | None = None) -> None:
        cur = self.current
        rejected = {str(v): r for v, r in self._last.rejected.items()}
        rejected |= {str(v): r for v, (_, r) in self._failed.items()}
        reason = self._note
        if cur is None and not reason:
            reason = self.unavailable_reason()
        record = WorkerRecord(
            state=state or ("ready" if cur else "unavailable"),
            version=cur.version if cur else None,
            versions=self._last.valid,
            rejected=rejected,
            reason=reason,
        )
        if cur is not None:
            record["servable"] = cur.describe()
            record["signature"] = cur.manifest.signature.to_dict()
            record["platform"] = PLATFORMS[cur.artifact]
        self.board.publish(self.cfg.name, self.worker, record)

    def unavailable_reason(self) -> str:
        if self._failed:
            v, (_, r) = max(self._failed.items())
            return f"version {v} rejected: {r}"
        if self._last.rejected:
            v = max(self._last.rejected)
            return f"version {v} rejected: {self._last.rejected[v]}"
        if self._last.pending:
            return f"version(s) {self._last.pending} still arriving"
        return f"no servable version matches policy {self.cfg.policy}"
