"""Triton's model configuration and statistics extensions, which standard tools ask for.

`perf_analyzer` asks `GET /v2/models/<m>/config` before any inference and reads the statistics
around each measurement; `tritonclient` has `get_model_config` and `get_inference_statistics`.
Both documents are built here as plain data, in Triton's JSON form, and served on REST by
`server.http.extensions` and on gRPC (converted to protobuf) by `server.grpc.servicer`.

- The configuration comes from the signature of the version in service (on the board) and our
  batching settings: `max_batch_size`, `dynamic_batching.max_queue_delay_microseconds` from
  `batch_timeout_s`, one instance group of `workers`.
- The statistics come from the Prometheus counters every process already keeps (aggregated
  across processes): per version, the requests answered and failed on both protocols; the
  model-wide batch, queue and compute figures are reported on the version in service.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from ..errors import not_found
from ..ipc.messages import WorkerRecord
from ..metrics import ENV
from .status import ServingStatus

TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
_SECONDS_TO_NS = 1e9


def _known(status: ServingStatus, name: str) -> None:
    if name not in status.models:
        raise not_found(f"unknown model {name!r}; serving {sorted(status.models)}")


def _serving(records: list[WorkerRecord], name: str, version: str | None) -> WorkerRecord | None:
    """The record of the version in service; 404 when `version` is given and is not it."""
    serving = next((r for r in records if r.get("version") is not None), None)
    if version is not None and (serving is None or str(serving.get("version")) != version):
        raise not_found(f"version {version!r} of model {name!r} is not loaded")
    return serving


def _described(records: list[WorkerRecord], name: str, version: str | None) -> dict[str, Any]:
    """Signature, platform and servable of `version` (default: the one in service), from the
    per-version maps a worker holding several versions reports, else from its single version."""
    serving = next((r for r in records if r.get("version") is not None), None)
    shown = version if version is not None else (str(serving.get("version")) if serving else None)
    for r in records:
        held: dict[str, Any] = dict(r)
        if shown is not None and shown in (held.get("signatures") or {}):
            return {
                "signature": held["signatures"][shown],
                "platform": (held.get("platforms") or {}).get(shown, ""),
                "servable": (held.get("servables") or {}).get(shown, {}),
            }
    return dict(_serving(records, name, version) or {})


def _version_policy(policy: str) -> dict[str, Any]:
    if policy.startswith("pinned:"):
        return {"specific": {"versions": [int(policy.split(":", 1)[1])]}}
    return {"latest": {"num_versions": 1}}


def _kind(device: str) -> str:
    return "KIND_GPU" if device.startswith("cuda") else "KIND_CPU" if device == "cpu" else "KIND_AUTO"


def model_config(status: ServingStatus, name: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration (JSON form) of `name`; 404 for an unknown model or version."""
    _known(status, name)
    cfg = status.models[name]
    serving = _described(status.records(name), name, version)
    signature = serving.get("signature") or {"inputs": [], "outputs": []}
    tensors = signature["inputs"] + signature["outputs"]
    # Triton's dims leave out the batch dimension when the model batches (max_batch_size > 0).
    batching = bool(tensors) and all(t["shape"][:1] == [-1] for t in tensors)

    def spec(t: dict[str, Any]) -> dict[str, Any]:
        dims = t["shape"][1:] if batching else t["shape"]
        return {"name": t["name"], "data_type": TRITON_TYPES.get(t["datatype"], "TYPE_INVALID"), "dims": dims}

    device = (serving.get("servable") or {}).get("device", cfg.device)
    doc: dict[str, Any] = {
        "name": name,
        "platform": serving.get("platform", ""),
        "backend": "modeldock",
        "version_policy": _version_policy(cfg.policy),
        "max_batch_size": cfg.max_batch_size if batching else 0,
        "input": [spec(t) for t in signature["inputs"]],
        "output": [spec(t) for t in signature["outputs"]],
        "instance_group": [{"name": f"{name}_0", "kind": _kind(device), "count": cfg.workers}],
    }
    if batching:
        doc["dynamic_batching"] = {"max_queue_delay_microseconds": round(cfg.batch_timeout_s * 1e6)}
    return doc


def _samples() -> Iterable[tuple[str, dict[str, str], float]]:
    """Every sample of this server's metrics, aggregated across its processes."""
    registry: CollectorRegistry = REGISTRY
    if ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for family in registry.collect():
        for s in family.samples:
            yield s.name, s.labels, s.value


_OK = {"200", "OK"}


def model_statistics(status: ServingStatus, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Triton's statistics (JSON form) for one model or all; 404 for an unknown model or version."""
    names = sorted(status.models) if name is None else [name]
    if name is not None:
        _known(status, name)
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    model_wide: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for sample, labels, value in _samples():
        model = labels.get("model", "")
        if model not in names:
            continue
        if sample in ("modeldock_requests_total", "modeldock_grpc_requests_total"):
            outcome = "success" if labels.get("code") in _OK else "fail"
            counts[(model, labels.get("version", ""))][outcome] += value
        elif sample.endswith(("_sum", "_count")):
            model_wide[model][sample] += value
    stats = []
    for n in names:
        records = status.records(n)
        serving = next((r for r in records if r.get("version") is not None), None)
        current = str(serving.get("version")) if serving else ""
        loaded = {str(v) for r in records for v in cast(dict[str, Any], dict(r).get("loaded") or {})}
        versions = {v for (m, v) in counts if m == n and v} | loaded | ({current} if current else set())
        if version is not None:
            if version not in versions:
                raise not_found(f"model {n!r} has no statistics for version {version!r}")
            versions = {version}
        for v in sorted(versions, key=lambda s: (len(s), s)):
            stats.append(_entry(n, v, counts[(n, v)], model_wide[n] if v == current else {}))
    return {"model_stats": stats}


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * _SECONDS_TO_NS)}


def _entry(name: str, version: str, counts: dict[str, float], wide: dict[str, float]) -> dict[str, Any]:
    def get(metric: str, part: str) -> float:
        return wide.get(f"modeldock_{metric}_{part}", 0.0)

    latency_s = get("request_duration_seconds", "sum") + get("grpc_request_duration_seconds", "sum")
    batches = get("inference_seconds", "count")
    return {
        "name": name,
        "version": version,
        "last_inference": 0,  # not kept
        "inference_count": int(get("batch_size", "sum")),  # rows run
        "execution_count": int(get("batch_size", "count")),  # batches run
        "inference_stats": {
            "success": _duration(counts.get("success", 0), latency_s if counts.get("success") else 0),
            "fail": _duration(counts.get("fail", 0), 0),
            "queue": _duration(get("queue_wait_seconds", "count"), get("queue_wait_seconds", "sum")),
            # Not timed apart from the model's run; perf_analyzer needs the three counts equal.
            "compute_input": _duration(batches, 0),
            "compute_infer": _duration(batches, get("inference_seconds", "sum")),
            "compute_output": _duration(batches, 0),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [],
    }
