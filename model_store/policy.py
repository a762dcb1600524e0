"""Version policies: which version a model should serve. Pure functions over manifests."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_POLICY = re.compile(r"^(latest|best:(?P<metric>[^:]+)(?::(?P<mode>min|max))?|pinned:(?P<pin>\d+))$")


@dataclass(frozen=True)
class VersionPolicy:
    """`latest`, `best:<metric>[:min|:max]` (max by default) or `pinned:<n>`."""

    kind: str
    metric: str | None = None
    minimize: bool = False
    pinned: int | None = None

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        m = _POLICY.match(text.strip())
        if not m:
            raise ValueError(f"version policy {text!r} must be 'latest', 'best:<metric>[:min]' or 'pinned:<n>'")
        if m["metric"]:
            return cls("best", metric=m["metric"], minimize=m["mode"] == "min")
        if m["pin"]:
            if int(m["pin"]) < 1:
                raise ValueError("pinned version must be a positive integer")
            return cls("pinned", pinned=int(m["pin"]))
        return cls("latest")

    def choose(self, metrics: Mapping[int, Mapping[str, float]]) -> int | None:
        """The version to serve among valid versions (version -> metrics), or None."""
        if self.kind == "pinned":
            return self.pinned if self.pinned in metrics else None
        if self.kind == "latest":
            return max(metrics, default=None)
        scored = [(m[self.metric], v) for v, m in metrics.items() if self.metric in m]  # type: ignore[index]
        if not scored:
            return None
        # Ties go to the newer version: retraining to the same score should roll forward.
        pick = min if self.minimize else max
        return pick(scored, key=lambda sv: (sv[0], sv[1] if not self.minimize else -sv[1]))[1]

    def __str__(self) -> str:
        if self.kind == "best":
            return f"best:{self.metric}{':min' if self.minimize else ''}"
        return f"pinned:{self.pinned}" if self.kind == "pinned" else "latest"
