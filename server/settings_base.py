"""The base of every settings class: unknown keys refused, docstrings as descriptions, and no
booleans where numbers belong. (A module of its own so that settings of a room, e.g. the
rollout's, can live beside the code that reads them without an import cycle.)"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

_CHECKED = ConfigDict(extra="forbid", use_attribute_docstrings=True, coerce_numbers_to_str=True)
_T = TypeVar("_T")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and what is allowed."""


def _fields(cls: type) -> dict[str, FieldInfo]:
    found: dict[str, FieldInfo] = cls.__dict__["__pydantic_fields__"]
    return found


@dataclass(config=_CHECKED)
class _Checked:
    """Checks shared by every settings class."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read `workers: yes` as 1; for a count or a duration that is a slip, not a number.
        kind = _fields(cls)[str(info.field_name)].annotation
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value
