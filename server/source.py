"""Source: watches the store and proposes the version a model should serve (its aspired version).

Stateless apart from the store's own caches: each poll lists the version folders, skips pending
ones, reports rejected ones with their reason, and applies the version policy to the rest. With
a bucket's store the same poll first syncs the model's mirror (one listing; downloads only what
changed), so the rules are the folder's; a bucket it cannot reach raises StoreError, and the
manager keeps what it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model_store import ModelStore, StoreError, VersionState
from model_store.policy import VersionPolicy


@dataclass(frozen=True)
class Aspired:
    """What one poll found."""

    version: int | None
    valid: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)


class StoreSource:
    def __init__(self, store: ModelStore, name: str, policy: VersionPolicy) -> None:
        self.store, self.name, self.policy = store, name, policy

    def poll(self) -> Aspired:
        statuses = self.store.statuses(self.name)  # a bucket's store syncs its mirror here
        servable = {
            s.version: s.manifest.metrics
            for s in statuses
            if s.state is VersionState.VALID and s.servable and s.manifest is not None
        }
        return Aspired(
            version=self.policy.choose(servable),
            valid=sorted(servable),
            rejected={s.version: s.reason for s in statuses if s.state is VersionState.REJECTED},
            pending=[s.version for s in statuses if s.state is VersionState.PENDING],
        )

    def fingerprint(self, version: int) -> object:
        """Identity of a version's current files (the store's cached status object)."""
        return self.store.status(self.name, version)


def log_new_models(store: ModelStore, served: set[str], interval: float, log: Callable[[str], None]) -> None:
    """Forever: report a model folder that appears after start-up, once (it needs a restart)."""
    seen = set(served)
    while True:
        time.sleep(interval)
        try:
            names = set(store.models())
        except (OSError, StoreError):  # an unreachable bucket: the managers report it
            continue
        for name in sorted(names - seen):
            log(f"model {name!r} appeared in the store; it will be served after a restart")
        seen |= names
