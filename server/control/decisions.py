"""Rollout decisions that outlive a restart: one small JSON file, written atomically.

A decision names a version by number and by the digest of its files' checksums, so a version
republished with other files is evaluated again, while a copy of the same files (another
replica's mirror, a restored backup) keeps its decision. Point every replica at one shared
writable file and they share their decisions; by default each server keeps its own under its
cache dir.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from model_store.manifest import Manifest

log = logging.getLogger(__name__)


def digest(manifest: Manifest) -> str:
    """Identity of a version's content, stable across copies (unlike sizes and mtimes)."""
    return ",".join(sorted(f.sha256 for f in manifest.files))


@dataclass(frozen=True)
class Decision:
    result: str  # "promoted" | "rejected"
    reason: str
    digest: str
    at: float


class Decisions:
    """model -> version -> Decision, read at start and rewritten on each decision."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Decision]] = {}
        try:
            raw = json.loads(path.read_text())
            self._data = {m: {v: Decision(**d) for v, d in vs.items()} for m, vs in raw.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:  # unreadable: start afresh, loudly
            log.error("rollout decisions %s unreadable, starting without them: %s", path, e)

    def get(self, model: str, version: int, manifest: Manifest) -> Decision | None:
        with self._lock:
            found = self._data.get(model, {}).get(str(version))
        return found if found is not None and found.digest == digest(manifest) else None

    def latest_promoted(self, model: str) -> list[tuple[int, Decision]]:
        """Promoted versions of a model, newest decision first."""
        with self._lock:
            found = [(int(v), d) for v, d in self._data.get(model, {}).items() if d.result == "promoted"]
        return sorted(found, key=lambda vd: vd[1].at, reverse=True)

    def record(self, model: str, version: int, manifest: Manifest, result: str, reason: str) -> Decision:
        decision = Decision(result, reason, digest(manifest), time.time())
        with self._lock:
            self._data.setdefault(model, {})[str(version)] = decision
            snapshot = {m: {v: asdict(d) for v, d in vs.items()} for m, vs in self._data.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".decisions-")
            with os.fdopen(fd, "w") as f:
                json.dump(snapshot, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:  # the decision still holds in memory; a restart would re-evaluate
            log.error("could not save rollout decisions to %s: %s", self.path, e)
        return decision
