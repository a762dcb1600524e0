"""Which versions of a model are loaded at once (TF Serving's / Triton's version policy).

`policy` (model_store.policy) picks the one version that answers requests naming no version;
this picks the others a client may ask for by number or label. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_FORM = re.compile(r"^(?:(?P<all>all)|latest:(?P<n>\d+)|specific:(?P<list>\d+(?:\s*,\s*\d+)*))$")
FORMS = "'' (only the policy's version), 'latest:<n>', 'all' or 'specific:<v>[,<v>...]'"


@dataclass(frozen=True)
class VersionSet:
    """`kind` is "default" (only the policy's pick), "latest", "all" or "specific"."""

    kind: str = "default"
    count: int = 0
    numbers: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionSet:
        text = text.strip()
        if not text:
            return cls()
        m = _FORM.match(text)
        if not m:
            raise ValueError(f"versions {text!r} must be {FORMS}")
        if m["all"]:
            return cls("all")
        if m["n"] is not None:
            if int(m["n"]) < 1:
                raise ValueError("versions 'latest:<n>' needs n of at least 1")
            return cls("latest", count=int(m["n"]))
        numbers = tuple(sorted({int(v) for v in m["list"].split(",")}))
        if numbers[0] < 1:
            raise ValueError("version numbers start at 1")
        return cls("specific", numbers=numbers)

    def select(self, valid: Iterable[int], default: int | None) -> list[int]:
        """The versions to load among the valid ones; the default version is always among them."""
        valid = sorted(set(valid))
        if self.kind == "all":
            chosen = set(valid)
        elif self.kind == "latest":
            chosen = set(valid[-self.count :])
        elif self.kind == "specific":
            chosen = set(self.numbers) & set(valid)
        else:
            chosen = set()
        if default is not None:
            chosen.add(default)
        return sorted(chosen)

    def mirror_keep(self, fallback: int) -> int | None:
        """How many versions a bucket's mirror must keep for this set (None: every version)."""
        if self.kind == "latest":
            return max(self.count + 1, fallback)
        return None if self.kind in ("all", "specific") else fallback

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.numbers))
        return "all" if self.kind == "all" else ""
