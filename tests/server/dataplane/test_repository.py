"""Repository and rollout commands end to end in-process: the data plane's `Command` on a
board, the supervisor's control loop (over a fake source) applying it, its `Ack` back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from server.config import ModelConfig, RolloutConfig
from server.control.decisions import Decisions
from server.control.models import ControlLoop, ModelControl
from server.dataplane.directory import ModelDirectory
from server.dataplane.repository import Repository
from server.errors import ServingError
from server.ipc.board import Board
from server.ipc.messages import Ack, Command
from tests.fakes import FakeSource

T = TypeVar("T")


def setup(mode: str = "off", decisions: Decisions | None = None) -> tuple[Repository, ControlLoop, FakeSource]:
    board = Board()
    board.bind({})
    source = FakeSource()
    cfg = ModelConfig(name="m", rollout=RolloutConfig(mode=mode, min_rows=100))  # type: ignore[arg-type]
    loop = ControlLoop([ModelControl(cfg, source, decisions)], board, interval=60)  # type: ignore[arg-type]
    source.offer(1, valid=[1, 2])
    loop.poll_all()
    return Repository(ModelDirectory([cfg], board, {}), board, wait_s=2.0), loop, source


def with_supervisor(loop: ControlLoop, call: Awaitable[T]) -> T:
    """Run `call` while the supervisor polls (as its control thread would)."""

    async def run() -> T:
        task = asyncio.ensure_future(call)
        while not task.done():
            await asyncio.sleep(0.02)
            loop.poll_all()
        return await task

    return asyncio.run(run())


def test_a_version_command_applies_at_the_next_poll_and_is_acknowledged() -> None:
    repo, loop, _ = setup()
    assert with_supervisor(loop, repo.version("m", "2", "load")) is True
    assert sorted(loop.models["m"].record.verdicts) == [1, 2]
    assert with_supervisor(loop, repo.version("m", "2", "pin")) is True
    assert loop.models["m"].pinned == 2
    assert with_supervisor(loop, repo.unpin("m")) is True and loop.models["m"].pinned is None


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("m", "1", "unload"), 409, "pin another one first"),  # the default: refused by the supervisor
        (("m", "9", "load"), 404, "not a valid version in the store"),
        (("m", "x", "load"), 400, "load_version needs a version number, got 'x'"),  # refused here
        (("m", "1", "explode"), 404, "no version action 'explode'"),
        (("nope", "1", "load"), 404, "not served; load it first"),
    ],
)
def test_a_refused_version_command_says_why(args: tuple[str, str, str], status: int, words: str) -> None:
    repo, loop, _ = setup()
    with pytest.raises(ServingError) as e:
        with_supervisor(loop, repo.version(*args))
    assert e.value.status == status and words in e.value.message


def test_model_loads_are_refused_without_a_pool() -> None:
    repo, loop, _ = setup()
    with pytest.raises(ServingError) as e:
        with_supervisor(loop, repo.model("m", "unload"))
    assert e.value.status == 409 and "pool_workers is 0" in e.value.message


def test_a_command_nobody_answers_in_time_applies_later() -> None:
    repo, loop, _ = setup()
    repo.wait_s = 0.1
    assert asyncio.run(repo.version("m", "2", "load")) is False  # no poll came: 202 on REST
    loop.poll_all()  # it still applies
    assert 2 in loop.models["m"].record.verdicts


def test_rollout_commands_need_a_candidate_and_abort_it(tmp_path: Path) -> None:
    repo, loop, source = setup(mode="shadow", decisions=Decisions(tmp_path / "decisions.json"))
    with pytest.raises(ServingError) as e:
        asyncio.run(repo.rollout("m", "promote"))
    assert e.value.status == 409 and "no rollout in progress" in e.value.message
    source.offer(2, valid=[1, 2])
    loop.poll_all()
    assert repo.rollout_state("m")["candidate"] == "2"
    state, applied = with_supervisor(loop, repo.rollout("m", "abort"))
    assert applied and state["candidate"] is None and "aborted by the operator" in state["status"]


def test_the_board_carries_typed_commands_and_acks() -> None:
    board = Board()
    shared: dict[str, Any] = {}
    board.bind(shared)
    cid = board.command(Command("m", "pin", 3))
    assert board.take_commands() == [(cid, Command("m", "pin", 3))] and board.take_commands() == []
    board.ack(cid, Ack(409, "busy"))
    assert board.take_ack(cid) == Ack(409, "busy") and board.take_ack(cid) is None
    shared["command/x"] = ("m", "load")  # an old string command from a mixed-version board
    assert board.take_commands() == []
