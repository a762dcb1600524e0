"""Batch execution: per-request answers, row chunking, failures isolated to their request."""

from __future__ import annotations

import numpy as np

from model_store.manifest import Examples, Manifest
from model_store.signature import Signature
from server.batching import Work, run_batch
from server.loader import Servable
from server.protocol import InferRequest
from tests.fakes import FakeRuntime

SIG = Signature.from_dict(
    {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }
)


def servable(fn) -> tuple[Servable, FakeRuntime]:  # type: ignore[no-untyped-def]
    manifest = Manifest("m", 2, "now", (), SIG, Examples("e", "0" * 64, 0))
    rt = FakeRuntime(fn)
    return Servable("m", 2, manifest, rt, "onnx", "cpu", "test", 0.0), rt


def work(rows: int, value: float = 1.0, dtype: type = np.float32, version: int | None = None) -> Work:
    arr = np.full((rows, 4), value, dtype=dtype)
    return Work(InferRequest({"input": arr}, rows=rows), version)


def test_one_bad_request_does_not_fail_its_batch() -> None:
    s, rt = servable(lambda x: x * 2)
    outcomes = run_batch(s, "m", [work(1, 1), work(2, 1, np.float64), work(3, 5), work(1, version=9)], 32, "")
    assert [o.status for o in outcomes] == [200, 400, 200, 404]
    assert "expected FP32" in outcomes[1].error and "version 9" in outcomes[3].error
    assert outcomes[0].outputs["output"].shape == (1, 4)  # type: ignore[index]
    assert (outcomes[2].outputs["output"] == 10).all()  # type: ignore[index]
    assert rt.calls == [4]  # the two valid requests ran as one batch


def test_a_request_over_max_batch_runs_in_chunks() -> None:
    s, rt = servable(lambda x: x + 1)
    [o] = run_batch(s, "m", [work(10, 3)], 4, "")
    assert rt.calls == [4, 4, 2] and o.outputs["output"].shape == (10, 4)  # type: ignore[index]


def test_model_failure_answers_500_for_that_request_only() -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        if (x == -1).any():
            raise RuntimeError("boom")
        return x

    s, _ = servable(fn)
    outcomes = run_batch(s, "m", [work(1, 1), work(1, -1), work(2, 2)], 32, "")
    assert [o.status for o in outcomes] == [200, 500, 200]
    assert "failed on this input" in outcomes[1].error


def test_no_servable_is_503_with_the_reason() -> None:
    [o] = run_batch(None, "m", [work(1)], 32, "version 3 rejected: sha256 mismatch")
    assert o.status == 503 and "sha256 mismatch" in o.error
