"""The messages between an HTTP process and a model's workers, and the records on the board."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import numpy as np

from model_store.manifest import Manifest

from ..protocol import InferRequest

if TYPE_CHECKING:  # runtimes imports torch, which a process that only passes messages never needs
    from model_store.runtimes import Tensors


@dataclass
class Work:
    """One request as it crosses the queue: decoded tensors and the version or label asked for."""

    request: InferRequest
    version: int | None = None
    label: str | None = None
    model: str = ""  # for a pool worker, which hosts several models
    instances: list[Any] | None = None  # the v1 route's `instances` (each one row), else None
    # time.monotonic() after which the client no longer waits (its gRPC deadline); 0: none.
    # CLOCK_MONOTONIC is one clock for every process of the machine, so the worker compares it.
    deadline: float = 0.0
    torchserve: bool = False  # instances from TorchServe's predictions route: its responses


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
    retry_after_s: int = 0  # with a 503: when to try again (a model still loading on demand)
    cold_start_s: float = 0.0  # waited for its model to load on demand (within queue_s)


class Queued(NamedTuple):
    """A request in a model's request channel."""

    consumer: int  # index of the HTTP process waiting for the answer
    uid: int  # unique within that HTTP process
    enqueued_at: float  # time.monotonic() in the HTTP process
    work: Work


Answer = tuple[int, Outcome]  # (uid, outcome); a worker sends a batch's answers as one list


class Cancel(NamedTuple):
    """The client of request `uid` of HTTP process `consumer` is gone: drop it if not run yet."""

    consumer: int
    uid: int


# ---- control: an operator's command to the supervisor and its answer --------------------------
MODEL_ACTIONS = ("load", "unload")  # a model of the store (the registry's)
ROLLOUT_ACTIONS = ("promote", "abort")  # the candidate on trial
VERSION_ACTIONS = ("load_version", "unload_version", "pin")  # one version (the model's own)


@dataclass(frozen=True)
class Command:
    """An operator's action on a model, applied at the supervisor's next poll."""

    model: str
    action: str  # one of MODEL_ACTIONS, ROLLOUT_ACTIONS, VERSION_ACTIONS or "unpin"
    version: int | None = None  # for VERSION_ACTIONS


@dataclass(frozen=True)
class Ack:
    """What became of a command: done (status 200), or refused with an HTTP status and why."""

    status: int = 200
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.status == 200


DONE = Ack()


# ---- on the wire: plain tuples ---------------------------------------------------------------
# Pickling a dataclass or a numpy array goes through `__reduce__` and copyreg: ~9 us to pickle a
# one-row request and ~3 us per answer, against ~0.5 us for a tuple of builtins. The channels
# pickle these tuples instead; the rest of the server only sees the types above.


def pack_tensors(tensors: Mapping[str, np.ndarray[Any, Any]] | None) -> tuple[Any, ...] | None:
    """Each array as (name, dtype, shape, its bytes); object arrays (BYTES) stay arrays."""
    if tensors is None:
        return None
    return tuple(
        (name, a) if a.dtype.hasobject else (name, a.dtype.str, a.shape, bytearray(np.ascontiguousarray(a)))
        for name, a in tensors.items()
    )


def unpack_tensors(packed: tuple[Any, ...] | None) -> dict[str, np.ndarray[Any, Any]] | None:
    if packed is None:
        return None
    # A bytearray makes a writable array without another copy (bytes would make it read-only).
    return {p[0]: p[1] if len(p) == 2 else np.frombuffer(p[3], dtype=p[1]).reshape(p[2]) for p in packed}


def pack_queued(q: Queued) -> tuple[Any, ...]:
    w, r = q.work, q.work.request
    request = (pack_tensors(r.inputs), r.id, r.outputs, r.binary, r.binary_default, r.rows)
    return (
        q.consumer,
        q.uid,
        q.enqueued_at,
        request,
        w.version,
        w.label,
        w.model,
        w.instances,
        w.deadline,
        w.torchserve,
    )


def unpack_queued(t: tuple[Any, ...]) -> Queued:
    consumer, uid, enqueued_at, (inputs, rid, outputs, binary, binary_default, rows), *work = t
    request = InferRequest(unpack_tensors(inputs) or {}, rid, outputs, binary, binary_default, rows)
    return Queued(consumer, uid, enqueued_at, Work(request, *work))


def pack_answers(answers: list[Answer]) -> list[tuple[Any, ...]]:
    return [
        (
            uid,
            o.status,
            o.version,
            pack_tensors(o.outputs),
            o.error,
            o.queue_s,
            o.infer_s,
            o.batch_rows,
            o.payload,
            o.retry_after_s,
            o.cold_start_s,
        )
        for uid, o in answers
    ]


def unpack_answers(packed: list[tuple[Any, ...]]) -> list[Answer]:
    return [
        (uid, Outcome(status, version, unpack_tensors(outputs), *rest))
        for uid, status, version, outputs, *rest in packed
    ]


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
    on_demand: bool = False  # within the memory budget: loaded on first request, may be evicted


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
