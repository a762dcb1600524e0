"""One model's inference in the data plane, without a server or a worker: limits, answers,
refusals, and the cancel of a request whose caller stopped waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from server.config import ModelConfig
from server.dataplane.endpoint import ModelEndpoint
from server.errors import ServingError
from server.ipc.channels import WorkerLost
from server.ipc.messages import Outcome, Queued
from server.protocol import InferRequest
from tests.fakes import FakeRequestChannel, FakeResponses


def endpoint(**cfg: Any) -> tuple[ModelEndpoint, FakeRequestChannel, FakeResponses]:
    requests, responses = FakeRequestChannel(), FakeResponses()
    model = ModelConfig(name="m", **cfg)
    return ModelEndpoint(model, 1, requests, responses, lambda: 3), requests, responses  # type: ignore[arg-type]


def request(rows: int = 2) -> InferRequest:
    return InferRequest({"input": np.ones((rows, 4), np.float32)}, rows=rows)


async def answered_with(result: Any, **infer: Any) -> tuple[int, Any]:
    ep, requests, responses = endpoint()
    task = asyncio.ensure_future(ep.infer(request(), **infer))
    await asyncio.sleep(0)
    (queued,) = requests.put_items
    assert isinstance(queued, Queued) and queued.consumer == 3  # this process's slot
    responses.answer(queued.uid, result)
    return await task


def test_an_answer_gives_the_version_and_outputs() -> None:
    out = {"output": np.zeros((2, 3), np.float32)}
    version, outputs = asyncio.run(answered_with(Outcome(200, 4, out)))
    assert version == 4 and outputs is out


@pytest.mark.parametrize(
    ("result", "status", "words"),
    [
        (Outcome(400, error="input 'x' is missing"), 400, "input 'x' is missing"),
        (TimeoutError(), 504, "longer than"),
        (WorkerLost(), 503, "restarted; retry"),
    ],
)
def test_a_refusal_or_a_lost_answer_is_a_serving_error(result: Any, status: int, words: str) -> None:
    with pytest.raises(ServingError) as e:
        asyncio.run(answered_with(result))
    assert e.value.status == status and words in e.value.message


def test_rows_over_the_limit_are_refused_before_anything_is_queued() -> None:
    ep, requests, _ = endpoint(max_rows_per_request=4)
    with pytest.raises(ServingError) as e:
        asyncio.run(ep.infer(request(rows=5)))
    assert e.value.status == 413 and "5 rows" in e.value.message and not requests.put_items


def test_the_queue_share_is_enforced_without_the_workers() -> None:
    ep, _, _ = endpoint(max_queued_requests=2)
    with ep.admitted(), ep.admitted():
        with pytest.raises(ServingError) as e, ep.admitted():
            pass
        assert e.value.status == 503 and e.value.headers.get("retry-after") == "1"
    assert ep.inflight == 0  # released on the way out


def test_a_cancelled_caller_cancels_its_request_in_the_queue() -> None:
    ep, requests, responses = endpoint()

    async def run() -> None:
        task = asyncio.ensure_future(ep.infer(request()))
        await asyncio.sleep(0)
        task.cancel()  # the client left (REST) or cancelled its call (gRPC)
        with pytest.raises(asyncio.CancelledError):
            await task
        (queued,) = requests.put_items
        assert requests.cancels == [(3, queued.uid)]  # type: ignore[attr-defined]
        responses.answer(queued.uid, Outcome(499))  # the worker's word on it is dropped quietly

    asyncio.run(run())


def test_a_deadline_travels_with_the_request() -> None:
    ep, requests, responses = endpoint()

    async def run() -> None:
        before = time.monotonic()
        task = asyncio.ensure_future(ep.infer(request(), deadline_s=2.0))
        await asyncio.sleep(0)
        (queued,) = requests.put_items
        assert before + 2.0 <= queued.work.deadline <= time.monotonic() + 2.0  # type: ignore[attr-defined]
        responses.answer(queued.uid, Outcome(504, error="the request's deadline passed"))  # type: ignore[attr-defined]
        with pytest.raises(ServingError):
            await task
        task2 = asyncio.ensure_future(ep.infer(request()))  # none: the workers never drop it
        await asyncio.sleep(0)
        assert requests.put_items[1].work.deadline == 0.0  # type: ignore[attr-defined]
        task2.cancel()

    asyncio.run(run())
