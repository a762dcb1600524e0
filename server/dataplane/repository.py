"""Repository and rollout commands: an operator's `Command` goes on the board, the supervisor's
next poll applies it and answers with an `Ack` (control/models.py), and the caller waits for it.

Everything applies to this replica only, until it restarts (docs/model-control.md). Loads name
a model of the configured store, never a path or a URL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import ServingError, not_found
from ..ipc.board import Board
from ..ipc.messages import MODEL_ACTIONS, ROLLOUT_ACTIONS, Ack, Command
from ..protocol import is_count
from .directory import ModelDirectory

VERSION_VERBS = {"load": "load_version", "unload": "unload_version", "pin": "pin"}  # path word -> action


def refused(ack: Ack) -> ServingError:
    return ServingError(ack.status, ack.reason)


class Repository:
    """The commands of one submitting process; `wait_s`: how long a caller waits for the poll."""

    def __init__(self, directory: ModelDirectory[Any], board: Board, wait_s: float) -> None:
        self.directory, self.board, self.wait_s = directory, board, wait_s

    async def send(self, command: Command) -> Ack | None:
        """The supervisor's answer to `command`, or None if its poll did not come within wait_s
        (the command still applies then)."""
        cid = self.board.command(command)
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            ack = self.board.take_ack(cid)
            if ack is not None:
                return ack
        return None

    async def apply(self, command: Command) -> bool:
        """`send`, raising the refusal as a ServingError; False when it applies later."""
        ack = await self.send(command)
        if ack is not None and not ack.done:
            raise refused(ack)
        return ack is not None

    # ---- rollouts ----------------------------------------------------------------------------
    def rollout_state(self, name: str) -> dict[str, Any]:
        if name not in self.directory.models:
            raise not_found(f"unknown model {name!r}; serving {sorted(self.directory.models)}")
        record = self.board.aspired(name)
        if record is None:
            return {"model": name, "phase": "stable", "candidate": None, "default": None, "status": ""}
        return {
            "model": name,
            "phase": record.phase,
            "candidate": str(record.candidate) if record.candidate is not None else None,
            "default": str(record.default) if record.default is not None else None,
            "status": record.rollout,
        }

    async def rollout(self, name: str, action: str) -> tuple[dict[str, Any], bool]:
        """Promote or abort the candidate: the rollout's state after, and whether it applied
        already (False: at the next poll)."""
        if action not in ROLLOUT_ACTIONS:
            raise not_found(f"no rollout action {action!r}; use one of {list(ROLLOUT_ACTIONS)}")
        if self.rollout_state(name)["candidate"] is None:
            raise ServingError(409, f"model {name!r} has no rollout in progress; nothing to {action}")
        # An answer of "still on trial" is not a refusal: the state says what became of it.
        applied = await self.send(Command(name, action)) is not None
        return self.rollout_state(name), applied

    # ---- models and versions -----------------------------------------------------------------
    async def model(self, name: str, action: str) -> bool:
        """Load or unload a model of the store; raises ServingError when refused."""
        if action not in MODEL_ACTIONS:
            raise not_found(f"no repository action {action!r}; use one of {list(MODEL_ACTIONS)}")
        return await self.apply(Command(name, action))

    async def version(self, name: str, version: str, action: str) -> bool:
        """Load, unload or pin one version of a served model."""
        if action not in VERSION_VERBS:
            raise not_found(f"no version action {action!r}; use one of {list(VERSION_VERBS)}")
        if name not in self.directory.models:
            raise not_found(f"model {name!r} is not served; load it first")
        verb = VERSION_VERBS[action]
        if not is_count(version) or int(version) < 1:
            raise ServingError(400, f"{verb} needs a version number, got {version!r}")
        return await self.apply(Command(name, verb, int(version)))

    async def unpin(self, name: str) -> bool:
        if name not in self.directory.models:
            raise not_found(f"model {name!r} is not served")
        return await self.apply(Command(name, "unpin"))

    def index(self) -> list[dict[str, Any]]:
        """The repository index: one entry per model of the store or served, with its state."""
        in_store = self.board.store_models()
        listings = self.board.models()
        out = []
        for name in sorted(set(in_store) | set(self.directory.models) | set(listings)):
            listing = listings.get(name)
            record = self.board.aspired(name)
            served = name in self.directory.models
            entry: dict[str, Any] = {"name": name, "state": "UNAVAILABLE", "reason": ""}
            if listing is not None and listing.removed:
                entry["reason"] = listing.removed
            elif not served:
                entry["reason"] = "not served (not allowed by the config, or not loaded)"
            if served and record is not None:
                ready = record.default is not None
                entry |= {
                    "state": "READY" if ready else "LOADING",
                    "version": str(record.default) if ready else "",
                    "versions": {str(v): "loaded" for v in sorted(record.verdicts)},
                }
                if record.note:
                    entry["reason"] = record.note
                if ready and self.directory.on_demand(name):
                    entry |= self._on_demand_state(name)
            out.append(entry)
        return out

    def _on_demand_state(self, name: str) -> dict[str, Any]:
        """Within the memory budget a model may be valid but not in memory: READY only while
        loaded, else LOADING or UNAVAILABLE with the pool's reason (Triton's states)."""
        records = self.board.records(name, self.directory.workers(name))
        states = [r.get("state") for r in records]
        if "ready" in states:
            return {}
        state = "LOADING" if "loading" in states else "UNAVAILABLE"
        return {"state": state, "reason": next((str(r.get("reason")) for r in records if r.get("reason")), "")}
