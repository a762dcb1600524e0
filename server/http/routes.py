"""The non-infer `/v2` routes (health, server and model metadata, readiness) and `/metrics`:
REST's codec over `dataplane.status`. Infer routes belong to `infer.py`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from ..dataplane.auth import check_api_key
from ..dataplane.status import ServingStatus
from ..errors import ServingError, not_found
from ..metrics import exposition
from .replies import error_reply, to_response


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Routes:
    """Registers the routes on a FastAPI app."""

    def __init__(self, status: ServingStatus, api_key: str) -> None:
        self.status = status
        self.api_key = api_key

    def register(self, app: FastAPI) -> None:
        app.add_exception_handler(ServingError, self._serving_error)  # type: ignore[arg-type]
        app.add_exception_handler(HTTPException, self._http_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self._validation_error)  # type: ignore[arg-type]
        get = {"methods": ["GET"]}
        app.add_api_route("/metrics", self.metrics, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/health/live", self.live, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/health/ready", self.server_ready, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2", self.server_metadata, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/models/{name}", self.model_metadata, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/models/{name}/versions/{version}", self.model_metadata, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/models/{name}/ready", self.model_ready, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/models/{name}/versions/{version}/ready", self.model_ready, **get)  # type: ignore[arg-type]
        app.add_api_route("/v2/models/{name}/labels/{label}/ready", self.label_ready, **get)  # type: ignore[arg-type]
        # Registered after the per-model infer routes, so only unknown models reach these.
        app.add_api_route("/v2/models/{name}/infer", self.unknown_infer, methods=["POST"])
        app.add_api_route("/v2/models/{name}/versions/{version}/infer", self.unknown_infer, methods=["POST"])
        app.add_api_route("/v2/models/{name}/labels/{version}/infer", self.unknown_infer, methods=["POST"])

    async def _serving_error(self, request: Request, exc: ServingError) -> Response:
        return to_response(error_reply(exc))

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else f"no route {request.url.path}"
        return to_response(error_reply(ServingError(exc.status_code, str(message), dict(exc.headers or {}))))

    async def _validation_error(self, request: Request, exc: RequestValidationError) -> Response:
        return to_response(error_reply(ServingError(400, f"invalid request: {exc.errors()}")))

    async def metrics(self) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def live(self) -> Response:
        return _json({"live": True})

    async def server_ready(self) -> Response:
        waiting = self.status.waiting_for()
        if not waiting:
            return _json({"ready": True, "waiting_for": []})
        return _json({"ready": False, "waiting_for": waiting, "error": f"not ready: {waiting}"}, 503)

    async def server_metadata(self, request: Request) -> Response:
        check_api_key(self.api_key, request.headers)
        return _json(self.status.server_metadata())

    async def model_metadata(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request.headers)
        return _json(self.status.model_metadata(name, version).document())

    async def model_ready(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request.headers)
        return self._readiness(name, version)

    async def label_ready(self, request: Request, name: str, label: str) -> Response:
        check_api_key(self.api_key, request.headers)
        return self._readiness(name, self.status.label_version(name, label))

    def _readiness(self, name: str, version: str | None) -> Response:
        why = self.status.model_unready(name, version)
        if not why:
            return _json({"name": name, "ready": True})
        return _json({"name": name, "ready": False, "error": why}, 503)

    async def unknown_infer(self, name: str, version: str | None = None) -> Response:
        self.status.check_served(name)  # a model being added answers 404 until its handler exists
        raise not_found(f"model {name!r} is not ready to answer yet")
