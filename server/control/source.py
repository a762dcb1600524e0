"""Source: watches the store and proposes the version a model should serve (its aspired version).

Stateless apart from the store's own caches: each poll lists the version folders, skips pending
ones, reports rejected ones with their reason, and applies the version policy to the rest. The
store verifies each version once per fingerprint (checksums, signature, golden outputs); the
chosen version travels on as a `Verdict` with its manifest, so nobody reads it again. With a
bucket's store the same poll first syncs the model's mirror (one listing; downloads only what
changed); a bucket it cannot reach raises StoreError, and the supervisor keeps what it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from model_store import ModelStore, StoreError, VersionState, VersionStatus
from model_store.manifest import MANIFEST_NAME, Manifest
from model_store.policy import VersionPolicy

from ..ipc.messages import Verdict
from .version_set import VersionSet

# Intact, but nothing this server may load: said in the metadata rather than left unexplained.
NOT_SERVABLE = "no servable artifact (a state_dict needs a model_factory; a pickle needs trust_pickle)"


@dataclass(frozen=True)
class Aspired:
    """What one poll found: the versions to load with their verdicts, and the default among them."""

    verdicts: dict[int, Verdict] = field(default_factory=dict)
    default: int | None = None
    valid: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    settling: bool = False  # a chosen version's files changed during the poll: decide next time
    set_aside: dict[int, str] = field(default_factory=dict)  # valid, but a rollout rejected it: why

    @property
    def version(self) -> int | None:
        return self.default


def file_stats(folder: Path, status: VersionStatus) -> tuple[tuple[str, int, int], ...] | None:
    """(path, size, mtime_ns) of the manifest and every listed file; None if one is gone."""
    assert status.manifest is not None
    stats = []
    for rel in [MANIFEST_NAME, *(f.path for f in status.manifest.files)]:
        try:
            st = (folder / rel).stat()
        except OSError:
            return None
        stats.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(stats)


def _never(version: int, manifest: Manifest) -> str:
    return ""


class StoreSource:
    def __init__(self, store: ModelStore, name: str, policy: VersionPolicy, versions: VersionSet | None = None) -> None:
        self.store, self.name, self.policy = store, name, policy
        self.versions = versions or VersionSet()
        # Why the policy must not choose a version ("" if it may): a rollout rejected it. Such a
        # version is still loadable by number.
        self.excluded: Callable[[int, Manifest], str] = _never

    def poll(self, also: Collection[int] = ()) -> Aspired:
        """`also`: versions to hand verdicts for besides the policy's (e.g. the one serving)."""
        statuses = self.store.statuses(self.name)  # a bucket's store syncs its mirror here
        valid = {s.version: s for s in statuses if s.state is VersionState.VALID and s.servable and s.manifest}
        set_aside = {v: why for v, s in valid.items() if s.manifest and (why := self.excluded(v, s.manifest))}
        eligible = {v: s.manifest.metrics for v, s in valid.items() if s.manifest and v not in set_aside}
        default = self.policy.choose(eligible)
        wanted = set(self.versions.select(valid, default)) | (set(also) & set(valid))
        verdicts = {v: self._verdict(valid[v]) for v in sorted(wanted)}
        settled = {v: verdict for v, verdict in verdicts.items() if verdict is not None}
        return Aspired(
            verdicts=settled,
            default=default,
            settling=len(settled) < len(verdicts),
            valid=sorted(valid),
            rejected={s.version: s.reason for s in statuses if s.state is VersionState.REJECTED}
            | {s.version: NOT_SERVABLE for s in statuses if s.state is VersionState.VALID and not s.servable},
            pending=[s.version for s in statuses if s.state is VersionState.PENDING],
            set_aside=set_aside,
        )

    def _verdict(self, status: VersionStatus) -> Verdict | None:
        folder = self.store.path(self.name, status.version)
        stats = file_stats(folder, status)
        # The store's status object is cached per fingerprint: the same object after our stat
        # means the files we stat are the files it verified.
        if stats is None or self.store.status(self.name, status.version) is not status:
            return None  # changing under us: the next poll sees it settled
        assert status.manifest is not None
        return Verdict(status.version, folder.resolve(), status.manifest, stats)


def log_new_models(store: ModelStore, served: set[str], interval: float, log: Callable[[str], None]) -> None:
    """Forever: report a model folder that appears after start-up, once (it needs a restart)."""
    seen = set(served)
    while True:
        time.sleep(interval)
        try:
            names = set(store.models())
        except (OSError, StoreError):  # an unreachable bucket: the control loop reports it
            continue
        for name in sorted(names - seen):
            log(f"model {name!r} appeared in the store; it will be served after a restart")
        seen |= names
