"""The worker loop: batch collection, per-request answers, row chunking, failures isolated."""

from __future__ import annotations

import time

import numpy as np

from model_store.manifest import Examples, Manifest
from model_store.signature import Signature
from server.ipc.messages import Outcome, Queued, Work
from server.protocol import InferRequest
from server.worker.loader import Servable
from server.worker.loop import BatchCollector, answer, run_batch
from tests.fakes import FakeAnswers, FakeRequests, FakeRuntime

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


def batch(s: Servable | None, works: list[Work], max_rows: int = 32, why_not: str = "") -> list[Outcome]:
    """Resolve like a worker serving only `s`: other versions are not loaded."""
    targets: list[Servable | Outcome] = []
    for w in works:
        if s is None:
            targets.append(Outcome(503, error=f"no ready version: {why_not}"))
        elif w.version not in (None, s.version):
            targets.append(Outcome(404, error=f"version {w.version} is not loaded"))
        else:
            targets.append(s)
    return run_batch(targets, works, max_rows)


def test_one_bad_request_does_not_fail_its_batch() -> None:
    s, rt = servable(lambda x: x * 2)
    outcomes = batch(s, [work(1, 1), work(2, 1, np.float64), work(3, 5), work(1, version=9)])
    assert [o.status for o in outcomes] == [200, 400, 200, 404]
    assert "expected FP32" in outcomes[1].error and "version 9" in outcomes[3].error
    assert outcomes[0].outputs["output"].shape == (1, 4)  # type: ignore[index]
    assert (outcomes[2].outputs["output"] == 10).all()  # type: ignore[index]
    assert rt.calls == [4]  # the two valid requests ran as one batch


def test_a_request_over_max_batch_runs_in_chunks() -> None:
    s, rt = servable(lambda x: x + 1)
    [o] = batch(s, [work(10, 3)], 4)
    assert rt.calls == [4, 4, 2] and o.outputs["output"].shape == (10, 4)  # type: ignore[index]


def test_model_failure_answers_500_for_that_request_only() -> None:
    def fn(x: np.ndarray) -> np.ndarray:
        if (x == -1).any():
            raise RuntimeError("boom")
        return x

    s, _ = servable(fn)
    outcomes = batch(s, [work(1, 1), work(1, -1), work(2, 2)])
    assert [o.status for o in outcomes] == [200, 500, 200]
    assert "failed on this input" in outcomes[1].error


def test_no_servable_is_503_with_the_reason() -> None:
    [o] = batch(None, [work(1)], why_not="version 3 rejected: sha256 mismatch")
    assert o.status == 503 and "sha256 mismatch" in o.error


def test_requests_for_two_versions_run_as_two_batches_in_one_round() -> None:
    one, rt1 = servable(lambda x: x + 1)
    two, rt2 = servable(lambda x: x + 2)
    outcomes = run_batch([one, two, one], [work(1), work(2), work(3)], 32)
    assert [int(o.outputs["output"][0, 0]) for o in outcomes] == [2, 3, 2]  # type: ignore[index]
    assert rt1.calls == [4] and rt2.calls == [2]


def queued(uid: int, rows: int) -> Queued:
    return Queued(0, uid, 0.0, work(rows))


def test_the_collector_packs_whole_requests_and_holds_the_one_that_does_not_fit() -> None:
    channel = FakeRequests([queued(1, 3), queued(2, 4), queued(3, 2), queued(4, 1)])
    collector = BatchCollector(channel, max_rows=8, wait_s=0)
    assert [q.uid for q in collector.collect()] == [1, 2]  # 3 + 4 rows; 2 more would make 9
    assert [q.uid for q in collector.collect()] == [3, 4]  # the held request starts this batch
    assert collector.collect() == []


def test_the_collector_dispatches_at_once_when_nothing_else_is_queued() -> None:
    channel = FakeRequests([queued(1, 1)])
    collector = BatchCollector(channel, max_rows=32, wait_s=0)
    assert [q.uid for q in collector.collect()] == [1]
    assert channel.waits[1] == 0.0  # looked without waiting: no batch window at wait_s=0


def test_each_http_process_gets_one_message_per_batch() -> None:
    items = [Queued(0, 1, 0.0, work(1)), Queued(1, 2, 0.0, work(1)), Queued(0, 3, 0.0, work(1))]
    answers = FakeAnswers()
    answer(items, [Outcome(200, 1), Outcome(400), Outcome(200, 1)], answers, ("m", 0))
    assert [(c, [uid for uid, _ in a]) for c, _, a in answers.sent] == [(0, [1, 3]), (1, [2])]


def test_the_collector_drops_cancelled_and_late_requests_before_the_batch() -> None:
    late = Queued(0, 2, 0.0, work(1))
    late.work.deadline = time.monotonic() - 1  # its caller stopped waiting a second ago
    alive = Queued(0, 4, 0.0, work(1))
    alive.work.deadline = time.monotonic() + 60
    channel = FakeRequests([queued(1, 1), late, queued(3, 1), alive])
    channel.cancels = {(0, 3)}
    collector = BatchCollector(channel, max_rows=8, wait_s=0)
    assert [q.uid for q in collector.collect()] == [1, 4]
    assert [(q.uid, why, o.status) for q, why, o in collector.dropped] == [
        (2, "deadline", 504),
        (3, "client_gone", 499),
    ]


def test_a_held_request_cancelled_meanwhile_is_dropped_too() -> None:
    channel = FakeRequests([queued(1, 3), queued(2, 4)])
    collector = BatchCollector(channel, max_rows=4, wait_s=0)
    assert [q.uid for q in collector.collect()] == [1]  # 2 is held for the next batch
    channel.cancels.add((0, 2))
    assert collector.collect() == [] and [q.uid for q, _, _ in collector.dropped] == [2]
