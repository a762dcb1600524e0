"""A batch through the user's handler (server/handlers): decode per request, one predict for the
batch, encode per request. A request the handler refuses gets its own 400 (or 500 naming the
handler); the others in the batch are answered. Also the v1 route's plain tensors for a model
without a handler (TF Serving's row format: each instance is one row of the only input).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ServingError
from ..ipc.messages import Outcome, Work
from .loader import Servable
from .rows import run_chunked, split, stack

log = logging.getLogger(__name__)
PARALLEL_DECODE_S = 0.0005  # per request: above it, a batch's requests are decoded in threads


def _decode(servable: Servable, work: Work) -> list[tuple[dict[str, Any], int]]:
    """The model's tensors per instance (v1) or for the request (v2); raises ServingError."""
    bound = servable.handler
    if work.instances is not None:
        if bound is not None:
            return [bound.decode(instance) for instance in work.instances]
        return [_plain_rows(servable, work.instances)]
    assert bound is not None
    req = work.request
    declared = [t.name for t in type(bound.handler).outputs]
    unknown = [o for o in req.outputs or [] if declared and o not in declared]
    if unknown:
        raise ServingError(400, f"unknown output {unknown[0]!r}; the model produces {declared}")
    return [bound.decode(req)]


def _decode_one(servable: Servable, work: Work) -> tuple[list[tuple[dict[str, Any], int]] | ServingError, float]:
    started = time.perf_counter()
    try:
        result: list[tuple[dict[str, Any], int]] | ServingError = _decode(servable, work)
    except ServingError as e:
        result = e
    return result, time.perf_counter() - started


def _decode_all(servable: Servable, works: Sequence[Work]) -> list[list[tuple[dict[str, Any], int]] | ServingError]:
    """Each request decoded; a batch's requests in threads when its handler's decoding is slow
    enough (an image's decode and resize) to pay for the hand-offs: Pillow and numpy release the
    GIL, so the worker uses the cores the HTTP side leaves idle. Handlers may already be called
    for several requests at once (docs/handlers.md, "State"). A cheap decode stays inline."""
    bound = servable.handler
    if bound is None or len(works) == 1 or _cores() == 1 or bound.decode_s < PARALLEL_DECODE_S:
        timed = [_decode_one(servable, w) for w in works]
    else:
        timed = list(_pool().map(lambda w: _decode_one(servable, w), works))
    if bound is not None:  # a moving average of one request's decode time, for the next batch
        bound.decode_s += 0.2 * (sum(t for _, t in timed) / len(timed) - bound.decode_s)
    return [r for r, _ in timed]


@functools.cache
def _cores() -> int:
    return len(os.sched_getaffinity(0))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Made on first use, in the worker process (never before a fork)."""
    return ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="decode")


def _plain_rows(servable: Servable, instances: list[Any]) -> tuple[dict[str, Any], int]:
    inputs = servable.manifest.signature.inputs
    if len(inputs) != 1:
        names = [s.name for s in inputs]
        raise ServingError(400, f"the v1 route needs a handler for a model with several inputs ({names})")
    spec = inputs[0]
    try:
        arr = np.asarray(instances, dtype=spec.dtype)
    except (ValueError, TypeError) as e:
        raise ServingError(400, f"instances do not make {spec.datatype} rows: {e}") from None
    if (problem := spec.mismatch(arr)) is not None:
        raise ServingError(400, f"instances: {problem}")
    return {spec.name: arr}, len(instances)


def _encode(servable: Servable, work: Work, parts: list[dict[str, Any]]) -> Outcome:
    bound = servable.handler
    if work.instances is None:
        assert bound is not None
        return Outcome(200, servable.version, bound.encode_v2(parts[0]))
    if bound is not None:
        encode = bound.encode_torchserve if work.torchserve else bound.encode_v1
        return Outcome(200, servable.version, payload=[encode(p) for p in parts])
    outputs = parts[0]
    rows = [dict(zip(outputs, values, strict=True)) for values in zip(*outputs.values(), strict=True)]
    plain = [{k: v.tolist() for k, v in r.items()} for r in rows]
    payload = [next(iter(r.values())) for r in plain] if len(outputs) == 1 else plain
    return Outcome(200, servable.version, payload=payload)


def run_handled(servable: Servable, works: Sequence[Work], max_rows: int) -> list[Outcome]:
    """Answer each request of one version's batch through its handler (or as v1 rows)."""
    outcomes: list[Outcome | None] = [None] * len(works)
    decoded: list[tuple[int, list[tuple[dict[str, Any], int]]]] = []
    for i, result in enumerate(_decode_all(servable, works)):
        if isinstance(result, ServingError):
            outcomes[i] = Outcome(result.status, error=result.message)
        else:
            decoded.append((i, result))
    if decoded:
        for i, outcome in _predict(servable, decoded, works, max_rows):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _predict(
    servable: Servable,
    decoded: list[tuple[int, list[tuple[dict[str, Any], int]]]],
    works: Sequence[Work],
    max_rows: int,
) -> list[tuple[int, Outcome]]:
    pieces = [tensors for _, parts in decoded for tensors, _ in parts]
    rows = [n for _, parts in decoded for _, n in parts]
    bound = servable.handler
    try:
        batched = bound.batch(pieces) if bound else stack(pieces)
        outputs = run_chunked(servable.predict, batched, max_rows)
        per_request = bound.unbatch(outputs, rows) if bound else split(outputs, rows)
    except Exception as e:
        if len(decoded) > 1:  # find the request that breaks the model; the others are answered
            return [r for one in decoded for r in _predict(servable, [one], works, max_rows)]
        status, message = (e.status, e.message) if isinstance(e, ServingError) else (500, "")
        if status == 500 and not message:
            log.exception("%s:%s failed on a valid request", servable.name, servable.version)
            message = f"model {servable.name!r} version {servable.version} failed on this input"
        return [(decoded[0][0], Outcome(status, error=message))]
    answers, at = [], 0
    for i, parts in decoded:
        mine, at = per_request[at : at + len(parts)], at + len(parts)
        try:
            answers.append((i, _encode(servable, works[i], mine)))
        except ServingError as e:
            answers.append((i, Outcome(e.status, error=e.message)))
    return answers
