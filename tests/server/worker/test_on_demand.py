"""The pool's memory budget in-process: a fake host whose loads the test releases, a real board."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from server.config import ModelConfig
from server.ipc.board import Board
from server.ipc.messages import AspiredRecord, Listing, Outcome, Queued, Work
from server.protocol import InferRequest
from server.worker.on_demand import OnDemand
from tests.fakes import fake_verdict


class SlowServables:
    """Loads when the test says so; `current` is set once loaded (None: the load failed)."""

    def __init__(self, cfg: ModelConfig, gate: threading.Event, fail: bool) -> None:
        self.cfg, self.gate, self.fail = cfg, gate, fail
        self.current: Any = None
        self.watching = self.stopped = False

    def load_now(self) -> None:
        assert self.gate.wait(10)
        if not self.fail:
            self.current = type("S", (), {"artifact": "onnx", "manifest": fake_verdict(1).manifest})()

    def watch(self) -> None:
        self.watching = True

    def stop(self) -> None:
        self.stopped = True

    def unavailable_reason(self) -> str:
        return "version 1 rejected: golden outputs differ"


class FakeHost:
    def __init__(self) -> None:
        self.hosted: dict[str, Any] = {}
        self.gate = threading.Event()
        self.fail: set[str] = set()

    def host(self, name: str, servables: Any) -> None:
        if servables is None:
            self.hosted.pop(name, None)
        else:
            self.hosted[name] = servables

    def make_servables(self, cfg: ModelConfig) -> Any:
        return SlowServables(cfg, self.gate, cfg.name in self.fail)

    def hosted_models(self) -> dict[str, Any]:
        return self.hosted


def setup(budget: int = 64 << 20, timeout_s: float = 10.0) -> tuple[OnDemand, FakeHost, Board]:
    board = Board()
    board.bind({})
    for name in ("m", "n"):
        board.aspire(name, AspiredRecord({1: fake_verdict(1, name=name)}, 1))  # type: ignore[arg-type]
    host = FakeHost()
    return OnDemand(host, board, 0, budget, timeout_s), host, board  # type: ignore[arg-type]


def queued(uid: int, model: str = "m") -> Queued:
    rows = {"input": np.zeros((1, 4), np.float32)}
    return Queued(0, uid, time.monotonic(), Work(InferRequest(rows, rows=1), model=model))


def never_dead(item: Queued) -> tuple[str, Outcome] | None:
    return None


def rounds_until(pool: OnDemand, dead: Any = never_dead, timeout_s: float = 5.0) -> tuple[list[Queued], list[Any]]:
    """Call `round` as the batch loop would, until something comes out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run, answered = pool.round(time.monotonic(), dead)
        if run or answered:
            return run, answered
        time.sleep(0.005)
    raise AssertionError("nothing came out of the pool")


def test_parked_requests_run_once_their_model_is_loaded() -> None:
    pool, host, board = setup()
    pool.listed({"m": Listing(ModelConfig(name="m"), pool=True, on_demand=True)})
    assert board.records("m", 1)[0]["state"] == "available"
    assert pool.park(ModelConfig(name="m"), [queued(1), queued(2)]) is None  # held, not answered
    pool.round(time.monotonic(), never_dead)  # the load starts
    assert board.records("m", 1)[0]["state"] == "loading" and pool.busy
    host.gate.set()
    run, answered = rounds_until(pool)
    assert [q.uid for q in run] == [1, 2] and answered == []
    assert host.hosted["m"].watching and not pool.busy


def test_a_request_waiting_past_load_timeout_gets_503_with_retry_after_and_the_load_goes_on() -> None:
    pool, host, _ = setup(timeout_s=0.05)
    pool.park(ModelConfig(name="m"), [queued(1)])
    _, answered = rounds_until(pool)
    ((item, outcome),) = answered
    assert item.uid == 1 and outcome.status == 503 and outcome.retry_after_s == 1
    assert "still loading after 0.05s" in outcome.error
    host.gate.set()  # the load finishes anyway: the retry finds the model loaded
    deadline = time.monotonic() + 5
    while "m" not in host.hosted and time.monotonic() < deadline:
        pool.round(time.monotonic(), never_dead)
        time.sleep(0.005)
    assert "m" in host.hosted


def test_a_parked_request_whose_client_left_is_dropped_and_a_failed_load_says_why() -> None:
    pool, host, _ = setup()
    pool.park(ModelConfig(name="m"), [queued(1), queued(2)])
    gone = Outcome(499, error="the client cancelled the request or disconnected")
    _, answered = rounds_until(pool, dead=lambda q: ("client_gone", gone) if q.uid == 1 else None)
    assert [(q.uid, o.status) for q, o in answered] == [(1, 499)]
    host.fail.add("m")
    host.gate.set()
    _, answered = rounds_until(pool)
    assert [(q.uid, o.status) for q, o in answered] == [(2, 503)]
    assert "could not load: version 1 rejected: golden outputs differ" in answered[0][1].error
    assert "m" not in host.hosted  # the next request tries again


def test_the_least_recently_used_idle_model_makes_room_and_pinned_ones_never_do() -> None:
    pool, host, board = setup(budget=10 << 20)
    host.gate.set()
    for name, used_at in (("m", 1.0), ("n", 2.0)):
        host.hosted[name] = SlowServables(ModelConfig(name=name), host.gate, False)
        pool.charges[name], pool.last_used[name] = 4 << 20, used_at
    board.aspire("o", AspiredRecord({1: fake_verdict(1, name="o")}, 1))  # type: ignore[arg-type]
    pool.costs["o"] = 4 << 20  # measured at an earlier load: 12 MiB in all would pass the budget
    pool.park(ModelConfig(name="o"), [queued(1, "o")])
    run, _ = rounds_until(pool)
    assert [q.uid for q in run] == [1]
    assert "m" not in host.hosted and "n" in host.hosted and "o" in host.hosted  # m was used longest ago
    assert board.records("m", 1)[0]["state"] == "available"
    assert "unloaded: least recently used" in board.records("m", 1)[0]["reason"]

    pool.pinned.add("n")  # n can never make room: o is the only one that can go
    pool.charges["o"], pool.last_used["o"] = 4 << 20, 0.0  # (the fake's load grows nothing)
    board.aspire("p", AspiredRecord({1: fake_verdict(1, name="p")}, 1))  # type: ignore[arg-type]
    pool.costs["p"] = 4 << 20
    pool.park(ModelConfig(name="p"), [queued(2, "p")])
    rounds_until(pool)
    assert "n" in host.hosted and "o" not in host.hosted and "p" in host.hosted


def test_a_model_larger_than_the_budget_is_refused_with_the_reason_until_a_new_version() -> None:
    pool, _, board = setup(budget=2 << 20)
    pool.costs["m"] = 3 << 20
    pool.park(ModelConfig(name="m"), [queued(1)])
    _, answered = pool.round(time.monotonic(), never_dead)
    assert [o.status for _, o in answered] == [507]
    assert "needs at least 3.0 MiB, more than the memory budget of 2.0 MiB" in answered[0][1].error
    assert board.records("m", 1)[0]["state"] == "unavailable"
    refused = pool.park(ModelConfig(name="m"), [queued(2)])  # at once, no load tried
    assert refused is not None and refused[0].status == 507
    board.aspire("m", AspiredRecord({2: fake_verdict(2)}, 2))  # type: ignore[arg-type]
    assert pool.park(ModelConfig(name="m"), [queued(3)]) is None  # a new version may fit
