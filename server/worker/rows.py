"""Rows in and out of a batch: stack requests' tensors, run in chunks of at most `max_rows`,
split the outputs back per request. One helper for the batch loop, handlers and the shadow."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray[Any, Any]]


def stack(parts: Sequence[Arrays]) -> dict[str, np.ndarray[Any, Any]]:
    """One array per name, the parts' rows in order; a lone part is passed through, uncopied."""
    if len(parts) == 1:
        return dict(parts[0])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_chunked(
    predict: Callable[[dict[str, np.ndarray[Any, Any]]], Arrays], inputs: Arrays, max_rows: int
) -> dict[str, np.ndarray[Any, Any]]:
    """`predict` over `inputs` in chunks of at most `max_rows` rows, the outputs stacked back."""
    total = next(iter(inputs.values())).shape[0]
    if total <= max_rows:
        return dict(predict(dict(inputs)))
    return stack([predict({k: v[s : s + max_rows] for k, v in inputs.items()}) for s in range(0, total, max_rows)])


def split(outputs: Arrays, rows: Sequence[int]) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Each request's rows of the outputs (views, not copies)."""
    out, start = [], 0
    for n in rows:
        out.append({k: v[start : start + n] for k, v in outputs.items()})
        start += n
    return out
