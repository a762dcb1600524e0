"""The messages between an HTTP process and a model's workers, and the records on the board."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from model_store.manifest import Manifest
from model_store.runtimes import Tensors

from ..protocol import InferRequest


@dataclass
class Work:
    """One request as it crosses the queue: decoded tensors and the version or label asked for."""

    request: InferRequest
    version: int | None = None
    label: str | None = None
    model: str = ""  # for a pool worker, which hosts several models
    instances: list[Any] | None = None  # the v1 route's `instances` (each one row), else None


@dataclass
class Outcome:
    """One request's answer as it crosses back: outputs, or an HTTP status and message."""

    status: int
    version: int | None = None
    outputs: Tensors | None = None
    error: str = ""
    queue_s: float = 0.0  # waited in the worker's queue
    infer_s: float = 0.0  # the batch's compute time
    batch_rows: int = 0  # rows in the batch it ran in
    payload: Any = None  # the v1 route's `predictions`


class Queued(NamedTuple):
    """A request in a model's request channel."""

    consumer: int  # index of the HTTP process waiting for the answer
    uid: int  # unique within that HTTP process
    enqueued_at: float  # time.monotonic() in the HTTP process
    work: Work


Answer = tuple[int, Outcome]  # (uid, outcome); a worker sends a batch's answers as one list


@dataclass(frozen=True)
class Verdict:
    """A version the supervisor verified (files, checksums, manifest), handed to the workers so
    they load it without reading or hashing the files again. `stats` lets a worker notice, with
    a stat per file, that the files changed after the verdict."""

    version: int
    folder: Path
    manifest: Manifest
    stats: tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns) of every file


@dataclass(frozen=True)
class AspiredRecord:
    """The supervisor's decision for one model: the versions to load (with their verdicts), the
    one that answers requests naming none, the labels, and what the store holds."""

    verdicts: dict[int, Verdict] = field(default_factory=dict)
    default: int | None = None
    labels: dict[str, int] = field(default_factory=dict)
    valid: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    note: str = ""  # why the decision keeps something unusual (e.g. a store that cannot be read)
    policy: str = "latest"
    candidate: int | None = None  # a new version on trial (docs/rollout.md); never the default
    phase: str = "stable"  # "stable" | "shadow" | "canary"
    rollout_key: str = ""  # names the trial: evidence for another key is not this one's
    rollout: str = ""  # the last rollout decision or the progress of this one, for the metadata
    removed: str = ""  # why the model is no longer served (its folder left the store, an unload)

    @property
    def version(self) -> int | None:
        return self.default

    @property
    def verdict(self) -> Verdict | None:
        return self.verdicts.get(self.default) if self.default is not None else None


@dataclass(frozen=True)
class Listing:
    """One served model in the server's registry (control/registry.py)."""

    config: Any  # its ModelConfig
    pool: bool  # hosted by the pool workers (added while serving), not by workers of its own
    removed: str = ""  # why it is not served any more ("" while served)


class WorkerRecord(TypedDict, total=False):
    """What one worker reports about one model."""

    state: str  # "loading" | "ready" | "unavailable": of the default version
    version: int | None  # the default version in service
    loaded: dict[str, str]  # every aspired version -> "ready" | "loading" | "failed: <reason>"
    servables: dict[str, dict[str, str]]  # describe() of each ready version
    signatures: dict[str, dict[str, Any]]  # of each ready version
    platforms: dict[str, str]  # of each ready version
    rollout: dict[str, Any]  # evidence on the candidate (control/evidence.py)
    candidate: int | None
    phase: str
    rollout_status: str  # the supervisor's last word on the rollout (AspiredRecord.rollout)
    labels: dict[str, int]
    versions: list[int]  # valid versions in the store, as last seen
    rejected: dict[str, str]  # version -> reason
    reason: str  # why unavailable / why kept (rollback impossible)
    servable: dict[str, str]  # describe() of the version in service
    signature: dict[str, Any]
    platform: str
