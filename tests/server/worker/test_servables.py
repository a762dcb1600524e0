"""A worker's servables, in-process, with a fake loader and a plain-dict board."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.config import ModelConfig
from server.ipc.board import Board
from server.ipc.messages import AspiredRecord
from server.worker.servables import Servables
from tests.fakes import FakeLoader, fake_verdict


def setup() -> tuple[Servables, Board, FakeLoader]:
    board = Board()
    board.bind({})
    loader = FakeLoader()
    return Servables(ModelConfig(name="m"), board, 0, loader, watch_s=60), board, loader  # type: ignore[arg-type]


def aspire(board: Board, version: int, stamp: int = 0, **kw: object) -> None:
    board.aspire("m", AspiredRecord({version: fake_verdict(version, stamp)}, version, **kw))  # type: ignore[arg-type]


def test_a_new_decision_loads_and_swaps_only_between_batches() -> None:
    s, board, _ = setup()
    aspire(board, 1)
    s.refresh()
    assert s.current is None  # loaded, but the batch loop has not swapped yet
    assert s.swap_if_ready() and s.version == 1
    aspire(board, 2)
    s.refresh()
    assert s.version == 1  # still serving 1 until the next gap between batches
    s.swap_if_ready()
    assert s.version == 2
    assert board.records("m", 1)[0]["version"] == 2


class ManagerLikeDict(dict[str, Any]):
    """Reads return copies and writes are counted, as through a multiprocessing Manager's proxy."""

    writes = reads = 0
    down = False  # the Manager's process unreachable

    def get(self, key: str, default: Any = None) -> Any:
        if self.down:
            raise ConnectionRefusedError("the board's process is gone")
        self.reads += 1
        return copy.deepcopy(super().get(key, default))

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def test_an_unchanged_decision_is_not_read_and_when_read_swaps_and_publishes_nothing() -> None:
    """The watcher looks twice a second. An idle worker reads the board only when the supervisor
    wrote to it, and an unchanged decision read again is neither applied nor re-published (the
    board's process wakes for every read and write)."""
    shared = ManagerLikeDict()
    board = Board()
    board.bind(shared)
    s = Servables(ModelConfig(name="m"), board, 0, FakeLoader(), watch_s=60)  # type: ignore[arg-type]
    aspire(board, 1)
    s.watch_once()
    assert s.swap_if_ready() and s.version == 1
    writes = shared.writes
    for _ in range(3):
        s.refresh()  # read again, as a watcher without the board's generation would
        assert not s.swap_if_ready()
    assert shared.writes == writes and s.version == 1
    reads = shared.reads
    for _ in range(3):
        s.watch_once()  # nothing new: the Manager is not even asked
    assert shared.reads == reads
    aspire(board, 2)
    s.watch_once()
    assert s.swap_if_ready() and s.version == 2 and shared.writes > writes + 1  # a change still lands

    # A decision that could not be read is read at the next look, not at the next decision.
    aspire(board, 3)
    shared.down = True
    with pytest.raises(ConnectionRefusedError):
        s.watch_once()
    shared.down = False
    s.watch_once()
    assert s.swap_if_ready() and s.version == 3


def test_a_refused_version_keeps_the_old_one_and_is_not_retried_until_its_files_change() -> None:
    s, board, loader = setup()
    aspire(board, 1)
    s.refresh()
    s.swap_if_ready()
    loader.refuse[2] = "golden outputs differ on this device"
    aspire(board, 2, stamp=7)
    for _ in range(3):
        s.refresh()
        s.swap_if_ready()
    assert s.version == 1 and loader.loads == [1, 2]  # tried once
    record = board.records("m", 1)[0]
    assert record["state"] == "ready" and "golden outputs differ" in record["rejected"]["2"]
    del loader.refuse[2]
    aspire(board, 2, stamp=8)  # republished: new files
    s.refresh()
    s.swap_if_ready()
    assert s.version == 2


def test_a_crashing_loader_does_not_take_the_worker_down() -> None:
    s, board, loader = setup()
    loader.crash.add(1)
    aspire(board, 1)
    s.refresh()
    assert s.current is None and "load failed: RuntimeError" in s.unavailable_reason()


def test_rollback_swaps_to_the_older_version() -> None:
    s, board, _ = setup()
    for v in (1, 2, 1):
        aspire(board, v)
        s.refresh()
        s.swap_if_ready()
    assert s.version == 1


def test_no_decision_yet_reports_loading_then_why() -> None:
    s, board, _ = setup()
    s.refresh()
    assert s.current is None and "no servable version" in s.unavailable_reason()
    board.aspire("m", AspiredRecord(pending=[4]))
    s.refresh()
    assert "still arriving" in s.unavailable_reason()


def aspire_many(board: Board, versions: list[int], default: int, labels: dict[str, int] | None = None) -> None:
    verdicts = {v: fake_verdict(v) for v in versions}
    board.aspire("m", AspiredRecord(verdicts, default, labels or {}))


def item(version: int | None = None, label: str | None = None, at: float = 0.0):  # type: ignore[no-untyped-def]
    from server.ipc.messages import Queued, Work
    from server.protocol import InferRequest

    return Queued(0, 1, at, Work(InferRequest({}, rows=1), version, label))


def step(s: Servables) -> None:
    s.refresh()
    s.swap_if_ready()


def test_several_versions_answer_on_their_own_numbers_and_labels() -> None:
    s, board, loader = setup()
    aspire_many(board, [2, 3], default=3, labels={"stable": 2})
    step(s)
    assert s.resolve(item()).version == 3  # type: ignore[union-attr]
    assert s.resolve(item(2)).version == 2  # type: ignore[union-attr]
    assert s.resolve(item(label="stable")).version == 2  # type: ignore[union-attr]
    assert s.resolve(item(1)).status == 404  # type: ignore[union-attr]
    assert s.resolve(item(label="canary")).status == 404  # type: ignore[union-attr]
    aspire_many(board, [2, 3, 4], default=4, labels={"stable": 3})  # the window moves, the label too
    step(s)
    assert sorted(loader.loads) == [2, 3, 4]  # 2 and 3 were not reloaded
    assert s.resolve(item()).version == 4 and s.resolve(item(label="stable")).version == 3  # type: ignore[union-attr]


def test_a_version_still_loading_is_503_and_a_failed_one_says_why() -> None:
    s, board, loader = setup()
    aspire_many(board, [1], default=1)
    step(s)
    loader.refuse[2] = "not enough memory"
    aspire_many(board, [1, 2], default=1)
    board.aspire("m", AspiredRecord({1: fake_verdict(1), 2: fake_verdict(2)}, 1))
    s.refresh()  # the refused load happens here
    s.swap_if_ready()
    out = s.resolve(item(2))
    assert out.status == 503 and "not enough memory" in out.error  # type: ignore[union-attr]
    assert board.records("m", 1)[0]["loaded"] == {"1": "ready", "2": "failed: not enough memory"}


def test_a_new_default_not_yet_loaded_leaves_the_old_default_answering() -> None:
    s, board, loader = setup()
    aspire_many(board, [1], default=1)
    step(s)
    loader.refuse[2] = "golden outputs differ"
    aspire_many(board, [2], default=2)
    step(s)
    assert s.resolve(item()).version == 1  # type: ignore[union-attr]


def test_a_removed_version_drains_then_unloads() -> None:
    import time

    s, board, _ = setup()
    aspire_many(board, [1, 2], default=2)
    step(s)
    before = time.monotonic()
    aspire_many(board, [2], default=2)
    step(s)
    assert s.resolve(item(1, at=before)).version == 1  # type: ignore[union-attr]  # queued before it left
    assert s.resolve(item(1, at=time.monotonic())).status == 404  # type: ignore[union-attr]
    s.drained(empty_since=time.monotonic())  # an idle round after it left
    assert s.resolve(item(1, at=before)).status == 404  # type: ignore[union-attr]
