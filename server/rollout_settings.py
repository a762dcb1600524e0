"""The rollout's settings: a model's `rollout:` section (docs/rollout.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from .settings_base import _CHECKED, _Checked


@dataclass(config=_CHECKED)
class RolloutConfig(_Checked):
    """How a new version the policy picks becomes the default (docs/rollout.md)."""

    mode: Literal["shadow", "canary", "off"] = "shadow"
    """`shadow`: compared on a copy of live traffic and the examples, promoted only if it agrees;
    `canary`: after shadow, a share of requests too; `off`: swapped in at once, as before 0.2."""
    compare: Literal["auto", "argmax", "allclose"] = "auto"
    """`auto`: arg-max agreement for [N, k>1] float outputs (class scores), allclose for the rest."""
    min_agreement: float = Field(default=0.9, ge=0, le=1)
    """Share of compared rows that must agree."""
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)
    shadow_share: float = Field(default=1.0, gt=0, le=1)
    """Share of the default version's batches also run on the candidate."""
    min_rows: int = Field(default=200, ge=1)
    """Enough evidence: this many rows compared (live traffic and both versions' stored examples)..."""
    decide_after_s: float = Field(default=60.0, gt=0)
    """...or, for a quiet model, whatever was compared after this long (the examples at least)."""
    max_latency_ratio: float = Field(default=2.0, gt=0)
    """Candidate time over serving time on the same batches; above it: rejected or rolled back."""
    canary_share: float = Field(default=0.1, gt=0, le=1)
    """In `canary` mode, the share of unversioned requests the candidate answers."""
    canary_requests: int = Field(default=200, ge=1)
    """Canary requests before the candidate is promoted."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Share of failed candidate requests (shadow or canary) above which it is rejected or rolled back."""

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false
