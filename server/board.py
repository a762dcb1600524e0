"""The status board: what each worker has loaded, shared with the HTTP processes.

Workers write one record per (model, worker) when their state changes; the HTTP processes read
it for readiness and metadata. It is a multiprocessing-Manager dict, so a write or a read is one
IPC round trip: never on the per-request path.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypedDict


class WorkerRecord(TypedDict, total=False):
    state: str  # "loading" | "ready" | "unavailable"
    version: int | None
    versions: list[int]  # valid versions in the store, as last seen
    rejected: dict[str, str]  # version -> reason
    reason: str  # why unavailable / why kept (rollback impossible)
    servable: dict[str, str]  # describe() of the version in service
    signature: dict[str, Any]
    platform: str


class Board:
    """A view over the shared dict; keys are `model/worker`."""

    def __init__(self, shared: MutableMapping[str, WorkerRecord]) -> None:
        self.shared = shared

    def publish(self, model: str, worker: int, record: WorkerRecord) -> None:
        self.shared[f"{model}/{worker}"] = record

    def records(self, model: str, workers: int) -> list[WorkerRecord]:
        """One record per expected worker; a worker not yet reporting counts as loading."""
        return [self.shared.get(f"{model}/{w}") or WorkerRecord(state="loading") for w in range(workers)]
