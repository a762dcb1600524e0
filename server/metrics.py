"""Every Prometheus metric in one place, correct across LitServe's processes.

prometheus-client's multiprocess mode keeps each process's values in files under one folder per
server instance (under the cache dir); `/metrics` in any HTTP process aggregates them. Counts
made in workers (batches, reloads) are per worker.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


def setup_multiprocess(cache_dir: str) -> Path:
    """Give this server instance its own metrics folder, inherited by every child it starts.

    Each instance gets `metrics/<pid>-<random>` under the cache dir, so servers sharing a cache
    dir never add up or delete each other's values. Folders of instances whose main process is
    gone are removed here; this instance's own folder is removed when it exits.
    """
    root = Path(cache_dir) / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_instances(root)
    folder = root / f"{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    os.environ[ENV] = str(folder)
    _use_multiprocess_values()
    owner = os.getpid()

    def remove_own_folder() -> None:
        if os.getpid() == owner:  # a forked child inherits this handler; only the owner cleans up
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove_own_folder)
    return folder


_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _cached_pid() -> int:
    return _pid


os.register_at_fork(after_in_child=_refresh_pid)


_VALUES: list[Any] = []  # our value class, made once: forked children inherit it


def _use_multiprocess_values() -> None:
    """Values in this instance's files. prometheus-client picks its value storage when first
    imported: switch it now. It asks for the pid on every update to notice a fork, and
    `os.getpid()` is a system call (3-4 per request); a pid cached and renewed at fork is as
    correct. Made once per process lineage: two value classes would each map the same file."""
    if not _VALUES:
        _VALUES.append(prometheus_client.values.MultiProcessValue(process_identifier=_cached_pid))  # type: ignore[no-untyped-call]
    prometheus_client.values.ValueClass = _VALUES[0]


def _remove_dead_instances(root: Path) -> None:
    """Remove `<pid>-<random>` folders whose pid is not running (killed instances leave them)."""
    for entry in root.iterdir():
        pid_text, sep, _ = entry.name.partition("-")
        if not (sep and pid_text.isdigit() and entry.is_dir()):
            continue  # not ours to judge
        # Our own pid on someone else's folder: an earlier run in this pid namespace (a container).
        if int(pid_text) == os.getpid() or not _alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "modeldock_requests_total",
            "Inference requests answered, by status code",
            ["model", "version", "code"],
        )
        self.latency = Histogram(
            "modeldock_request_duration_seconds",
            "Time from request to response",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = Histogram(
            "modeldock_queue_wait_seconds",
            "Time a request waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "modeldock_batch_size",
            "Rows per batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.inference = Histogram(
            "modeldock_inference_seconds",
            "Model time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.cancelled = Counter(
            "modeldock_cancelled_requests_total",
            "Requests dropped before a batch: their client left or cancelled (client_gone), or their deadline passed (deadline)",
            ["model", "reason"],
        )
        self.load = Histogram(
            "modeldock_version_load_seconds",
            "Time to load, validate and warm up a version",
            ["model"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.reloads = Counter("modeldock_model_reloads_total", "Version loads by result", ["model", "result"])
        self.version = Gauge(
            "modeldock_model_version",
            "Version in service",
            ["model", "worker"],
            multiprocess_mode="mostrecent",
        )
        # Rollouts (written by the supervisor, docs/rollout.md).
        self.rollout_phase = Gauge(
            "modeldock_rollout_phase",
            "1 while a candidate version is in a phase (shadow, canary), else 0",
            ["model", "version", "phase"],
            multiprocess_mode="mostrecent",
        )
        self.rollout_agreement = Gauge(
            "modeldock_rollout_agreement",
            "Share of compared rows where the candidate agrees with the serving version",
            ["model", "version"],
            multiprocess_mode="mostrecent",
        )
        self.rollout_latency = Gauge(
            "modeldock_rollout_latency_ratio",
            "Candidate compute time over the serving version's on the same batches",
            ["model", "version"],
            multiprocess_mode="mostrecent",
        )
        self.rollout_errors = Gauge(
            "modeldock_rollout_candidate_failures",
            "Shadow batches and canary requests the candidate failed",
            ["model", "version"],
            multiprocess_mode="mostrecent",
        )
        self.rollout_decisions = Counter(
            "modeldock_rollout_decisions_total",
            "Rollout outcomes: promoted, rejected (incl. rolled back), superseded",
            ["model", "result"],
        )
        # The pool's memory budget (server/worker/on_demand.py).
        self.cold_starts = Counter(
            "modeldock_pool_cold_starts_total", "Loads on demand: a request came for a model not loaded", ["model"]
        )
        self.evictions = Counter(
            "modeldock_pool_evictions_total", "Models unloaded to make room within the memory budget", ["model"]
        )
        self.cold_wait = Histogram(
            "modeldock_pool_cold_start_wait_seconds",
            "How long a request waited for its model to load on demand",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.pool_budget = Gauge(
            "modeldock_pool_memory_budget_bytes",
            "The memory budget of a pool worker",
            ["worker"],
            multiprocess_mode="mostrecent",
        )
        self.pool_used = Gauge(
            "modeldock_pool_memory_used_bytes",
            "Memory the models loaded in a pool worker take (measured at their load)",
            ["worker"],
            multiprocess_mode="mostrecent",
        )
        self.loaded = Gauge(
            "modeldock_version_loaded",
            "1 while a version is loaded and answers on its own URL, 0 once unloaded",
            ["model", "version", "worker"],
            multiprocess_mode="mostrecent",
        )


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metric objects, made on first use (after the process knows its folder)."""
    global _metrics
    if _metrics is None:
        if ENV in os.environ and not _VALUES:  # a spawned worker: prometheus-client came with the folder
            _use_multiprocess_values()
        _metrics = Metrics()
    return _metrics


def exposition() -> bytes:
    if ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
