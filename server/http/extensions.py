"""Triton's model configuration and statistics extensions on REST (`dataplane.triton` builds them)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from ..dataplane.auth import check_api_key
from ..dataplane.status import ServingStatus
from ..dataplane.triton import model_config, model_statistics


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def register(app: FastAPI, status: ServingStatus, api_key: str) -> None:
    """Add the REST routes; call before `Routes.register(app)` (its `/v2/models/{name}` would
    otherwise take `GET /v2/models/stats`)."""

    async def config(request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(api_key, request.headers)
        return _json(model_config(status, name, version))

    async def statistics(request: Request, name: str | None = None, version: str | None = None) -> Response:
        check_api_key(api_key, request.headers)
        return _json(model_statistics(status, name, version))

    get = {"methods": ["GET"]}
    app.add_api_route("/v2/models/stats", statistics, **get)  # type: ignore[arg-type]
    app.add_api_route("/v2/models/{name}/stats", statistics, **get)  # type: ignore[arg-type]
    app.add_api_route("/v2/models/{name}/versions/{version}/stats", statistics, **get)  # type: ignore[arg-type]
    app.add_api_route("/v2/models/{name}/config", config, **get)  # type: ignore[arg-type]
    app.add_api_route("/v2/models/{name}/versions/{version}/config", config, **get)  # type: ignore[arg-type]
