"""The supervisor's decision point, in-process, with a fake source: swap, reject, rollback, keep."""

from __future__ import annotations

from model_store import StoreError
from server.config import ModelConfig, RolloutConfig
from server.control.models import ControlLoop, ModelControl
from server.ipc.board import Board
from tests.fakes import FakeSource


def control(mode: str = "off") -> tuple[ModelControl, FakeSource]:
    """Without a rollout by default: these tests are about the decision, not the trial."""
    source = FakeSource()
    cfg = ModelConfig(name="m", rollout=RolloutConfig(mode=mode))  # type: ignore[arg-type]
    return ModelControl(cfg, source), source  # type: ignore[arg-type]


def test_a_new_version_becomes_the_decision() -> None:
    c, source = control()
    source.offer(1)
    assert c.poll().version == 1
    source.offer(2, valid=[1, 2])
    record = c.poll()
    assert record.version == 2 and record.valid == [1, 2] and record.note == ""


def test_rejected_versions_are_reported_once_and_never_chosen() -> None:
    c, source = control()
    counted: list[str] = []
    c.on_rejected = counted.append
    source.offer(1, valid=[1], rejected={2: "sha256 mismatch"})
    for _ in range(3):
        record = c.poll()
    assert record.version == 1 and record.rejected == {2: "sha256 mismatch"}
    assert counted == ["m"]  # logged and counted once per (version, reason)


def test_deleting_the_serving_version_rolls_back() -> None:
    c, source = control()
    source.offer(2, valid=[1, 2])
    c.poll()
    source.offer(1, valid=[1])
    assert c.poll().version == 1


def test_nothing_valid_left_keeps_the_version_in_memory_with_a_note() -> None:
    c, source = control()
    source.offer(3, valid=[3])
    c.poll()
    source.offer(None, valid=[])
    record = c.poll()
    assert record.version == 3 and "left the store" in record.note


def test_an_unreadable_store_changes_nothing_and_says_why() -> None:
    c, source = control()
    source.offer(1)
    c.poll()
    source.error = StoreError("bucket unreachable")
    record = c.poll()
    assert record.version == 1 and "bucket unreachable" in record.note
    source.error = None
    assert c.poll().note == ""  # readable again: the note goes


def test_files_changing_during_a_poll_keep_the_previous_decision() -> None:
    c, source = control()
    source.offer(1)
    c.poll()
    source.offer(None, valid=[1, 2], settling=True)
    assert c.poll().version == 1


def test_the_loop_publishes_only_changed_decisions_on_the_board() -> None:
    c, source = control()
    shared: dict[str, object] = {}
    board = Board()
    board.bind(shared)
    loop = ControlLoop([c], board, interval=60)
    source.offer(1)
    loop.poll_all()
    first = board.aspired("m")
    assert first is not None and first.version == 1
    loop.poll_all()
    assert board.aspired("m") is first  # unchanged: not rewritten (one IPC write saved per poll)
    source.offer(2, valid=[1, 2])
    loop.poll_all()
    assert board.aspired("m").version == 2  # type: ignore[union-attr]
