"""Admin routes (off without `admin_api_key`): REST's codec over `dataplane.repository`, an
operator's word on rollouts and on which models and versions this replica serves. Everything
applies at the supervisor's next poll (the route waits for it; 202 when it comes later) and to
this replica only, until it restarts (docs/model-control.md).

- `GET /v2/models/{m}/rollout`, `POST /v2/models/{m}/rollout/promote|abort` (docs/rollout.md)
- `GET|POST /v2/repository/index`, `POST /v2/repository/models/{m}/load|unload` (Triton's)
- `POST /v2/repository/models/{m}/versions/{v}/load|unload|pin`, `POST .../models/{m}/unpin` (ours)
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from ..dataplane.auth import check_admin_key
from ..dataplane.repository import Repository


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _done(applied: bool, action: str, done: dict[str, Any]) -> Response:
    if applied:
        return _json(done)
    return _json({**done, "status": f"{action} accepted; applies at the next poll"}, 202)


class AdminRoutes:
    def __init__(self, repository: Repository, admin_key: str) -> None:
        self.repository, self.admin_key = repository, admin_key

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

    async def rollout_status(self, request: Request, name: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        return _json(self.repository.rollout_state(name))

    async def rollout_act(self, request: Request, name: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        state, applied = await self.repository.rollout(name, action)
        return _done(applied, action, state)

    async def index(self, request: Request) -> Response:
        """Every model of the store and every one served: versions, state, reason."""
        check_admin_key(self.admin_key, request.headers)
        return _json(self.repository.index())

    async def model_act(self, request: Request, name: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        applied = await self.repository.model(name, action)
        return _done(applied, action, {"name": name, "action": action, "status": "done"})

    async def version_act(self, request: Request, name: str, version: str, action: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        applied = await self.repository.version(name, version, action)
        return _done(applied, action, {"name": name, "version": version, "action": action, "status": "done"})

    async def unpin(self, request: Request, name: str) -> Response:
        check_admin_key(self.admin_key, request.headers)
        applied = await self.repository.unpin(name)
        return _done(applied, "unpin", {"name": name, "action": "unpin", "status": "done"})
