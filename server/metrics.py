"""Every Prometheus metric in one place, correct across LitServe's processes.

prometheus-client's multiprocess mode keeps each process's values in files under one folder
(under the cache dir); `/metrics` in any HTTP process aggregates them. Counts made in workers
(batches, reloads) are per worker.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


def setup_multiprocess(cache_dir: str) -> None:
    """Point every process of this server at a fresh metrics folder (call before any child)."""
    folder = Path(cache_dir) / "metrics"
    shutil.rmtree(folder, ignore_errors=True)  # stale files from an earlier run would add up
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    # prometheus-client picks its value storage when first imported; switch it now.
    prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()  # type: ignore[no-untyped-call]


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


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metric objects, made on first use (after the process knows its folder)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def exposition() -> bytes:
    if ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
