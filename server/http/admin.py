"""Admin routes (off without `admin_api_key`): an operator's word on rollouts and on which models
and versions this replica serves. Everything applies at the supervisor's next poll (the route
waits for it) and to this replica only, until it restarts (docs/model-control.md).

- `GET /v2/models/{m}/rollout`, `POST /v2/models/{m}/rollout/promote|abort` (docs/rollout.md)
- `GET|POST /v2/repository/index`, `POST /v2/repository/models/{m}/load|unload` (Triton's)
- `POST /v2/repository/models/{m}/versions/{v}/load|unload|pin`, `POST .../models/{m}/unpin` (ours)

Loads name a model of the configured store, never a path or a URL.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from ..errors import ServingError, not_found
from ..ipc.board import Board
from .directory import ModelDirectory

ROLLOUT_ACTIONS = ("promote", "abort")
MODEL_ACTIONS = ("load", "unload")
VERSION_ACTIONS = ("load", "unload", "pin")


def check_admin_key(expected: str, headers: Mapping[str, str]) -> None:
    if not expected:  # registered only with a key; kept as a guard against misuse
        raise not_found("admin routes are off (no admin_api_key)")
    given = headers.get("x-admin-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServingError(401, "missing or wrong admin key (send X-Admin-Key or Authorization: Bearer)")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class AdminRoutes:
    def __init__(self, directory: ModelDirectory, board: Board, admin_key: str, wait_s: float) -> None:
        self.directory, self.board, self.admin_key, self.wait_s = directory, board, admin_key, wait_s

    def register(self, app: FastAPI) -> None:
        if not self.admin_key:
            return  # off: the paths answer 404 like any unknown route
        app.add_api_route("/v2/models/{name}/rollout", self.rollout_status, methods=["GET"])
        app.add_api_route("/v2/models/{name}/rollout/{action}", self.rollout_act, methods=["POST"])
        app.add_api_route("/v2/repository/index", self.index, methods=["GET", "POST"])
        app.add_api_route("/v2/repository/models/{name}/unpin", self.unpin, methods=["POST"])
        app.add_api_route("/v2/repository/models/{name}/{action}", self.model_act, methods=["POST"])
        app.add_api_route(
            "/v2/repository/models/{name}/versions/{version}/{action}", self.version_act, methods=["POST"]
        )

    # ---- the supervisor's answer -----------------------------------------------------------------
    async def _command(self, name: str, action: str) -> str | None:
        """Send a command and wait for the supervisor's word: "" done, a reason, or None (late)."""
        cid = self.board.command(name, action)
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            outcome = self.board.take_ack(cid)
            if outcome is not None:
                return outcome
        return None

    async def _act(self, name: str, action: str, done: dict[str, Any]) -> Response:
        outcome = await self._command(name, action)
        if outcome is None:
            return _json({**done, "status": f"{action} accepted; applies at the next poll"}, 202)
        if outcome:
            code, _, why = outcome.partition(" ")
            raise ServingError(int(code) if code.isdigit() else 409, why if code.isdigit() else outcome)
        return _json(done)

    # ---- rollouts ------------------------------------------------------------------------------
    def _rollout_state(self, name: str) -> dict[str, Any]:
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

    async def rollout_status(self, request: Request, name: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        return _json(self._rollout_state(name))

    async def rollout_act(self, request: Request, name: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        if action not in ROLLOUT_ACTIONS:
            raise not_found(f"no rollout action {action!r}; use one of {list(ROLLOUT_ACTIONS)}")
        if self._rollout_state(name)["candidate"] is None:
            raise ServingError(409, f"model {name!r} has no rollout in progress; nothing to {action}")
        outcome = await self._command(name, action)
        if outcome is None:
            return _json({**self._rollout_state(name), "status": f"{action} accepted; applies at the next poll"}, 202)
        return _json(self._rollout_state(name))

    # ---- the repository ------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        """Every model of the store and every one served: versions, state, reason."""
        check_admin_key(self.admin_key, request.headers)
        return _json(self.entries())

    def entries(self) -> list[dict[str, Any]]:
        """The repository index (REST and gRPC): one entry per model of the store or served."""
        in_store = self.board.shared.get("store_models") or []
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
            out.append(entry)
        return out

    async def model_command(self, name: str, action: str) -> None:
        """A model's load or unload (REST and gRPC); raises ServingError when refused."""
        outcome = await self._command(name, action)
        if outcome:
            code, _, why = outcome.partition(" ")
            raise ServingError(int(code) if code.isdigit() else 409, why if code.isdigit() else outcome)

    async def model_act(self, request: Request, name: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        if action not in MODEL_ACTIONS:
            raise not_found(f"no repository action {action!r}; use one of {list(MODEL_ACTIONS)}")
        return await self._act(name, action, {"name": name, "action": action, "status": "done"})

    async def version_act(self, request: Request, name: str, version: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        if action not in VERSION_ACTIONS:
            raise not_found(f"no version action {action!r}; use one of {list(VERSION_ACTIONS)}")
        if name not in self.directory.models:
            raise not_found(f"model {name!r} is not served; load it first")
        verb = {"load": "load_version", "unload": "unload_version", "pin": "pin"}[action]
        done = {"name": name, "version": version, "action": action, "status": "done"}
        return await self._act(name, f"{verb}:{version}", done)

    async def unpin(self, request: Request, name: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        if name not in self.directory.models:
            raise not_found(f"model {name!r} is not served")
        return await self._act(name, "unpin", {"name": name, "action": "unpin", "status": "done"})
