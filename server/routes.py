"""The non-infer `/v2` routes (health, server and model metadata, readiness) and error bodies.

They run in the HTTP processes and read the status board; infer routes belong to the spec.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from .board import Board, WorkerRecord
from .config import ModelConfig
from .metrics import exposition
from .spec import check_api_key, error_reply, to_response

EXTENSIONS = ["binary_tensor_data", "model_repository_versions", "golden_output_validation"]


def _json(body: Any, status: int = 200) -> Response:
    import orjson

    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Routes:
    """Registers the routes on a FastAPI app for a fixed set of models."""

    def __init__(self, models: Sequence[ModelConfig], board: Callable[[], Board], api_key: str) -> None:
        self.models = {m.name: m for m in models}
        self.board = board  # resolved lazily: the board exists only once LitServe's manager runs
        self.api_key = api_key

    def records(self, name: str) -> list[WorkerRecord]:
        return self.board().records(name, self.models[name].workers)

    def ready(self, name: str, version: int | None = None) -> bool:
        return all(
            r.get("state") == "ready" and (version is None or r.get("version") == version) for r in self.records(name)
        )

    def register(self, app: FastAPI) -> None:
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
        # Registered after the per-model infer routes, so only unknown models reach these.
        app.add_api_route("/v2/models/{name}/infer", self.unknown_infer, methods=["POST"])
        app.add_api_route("/v2/models/{name}/versions/{version}/infer", self.unknown_infer, methods=["POST"])

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else f"no route {request.url.path}"
        return _error(exc.status_code, str(message), dict(exc.headers or {}))

    async def _validation_error(self, request: Request, exc: RequestValidationError) -> Response:
        return _error(400, f"invalid request: {exc.errors()}")

    async def metrics(self) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def live(self) -> Response:
        return _json({"live": True})

    async def server_ready(self) -> Response:
        waiting = [n for n in self.models if not self.ready(n)]
        if not waiting:
            return _json({"ready": True, "waiting_for": []})
        return _json({"ready": False, "waiting_for": waiting, "error": f"not ready: {waiting}"}, 503)

    async def server_metadata(self, request: Request) -> Response:
        check_api_key(self.api_key, request)
        return _json(
            {
                "name": "modeldock",
                "version": importlib.metadata.version("modeldock"),
                "extensions": EXTENSIONS,
            }
        )

    def _known(self, name: str) -> Response | None:
        if name not in self.models:
            return _error(404, f"unknown model {name!r}; serving {sorted(self.models)}")
        return None

    async def model_metadata(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request)
        if (missing := self._known(name)) is not None:
            return missing
        records = self.records(name)
        serving = next((r for r in records if r.get("version") is not None), None)
        if version is not None and (serving is None or str(serving.get("version")) != version):
            return _error(404, f"version {version!r} of model {name!r} is not loaded")
        signature = (serving or {}).get("signature") or {"inputs": [], "outputs": []}
        properties: dict[str, Any] = {
            "state": records[0].get("state"),
            "version_policy": self.models[name].policy,
            "rejected": records[0].get("rejected", {}),
            "workers": [{"state": r.get("state"), "version": r.get("version")} for r in records],
        }
        if records[0].get("reason"):
            properties["reason"] = records[0]["reason"]
        if serving is not None:
            properties.update(serving.get("servable", {}))
        return _json(
            {
                "name": name,
                "versions": [str(v) for v in records[0].get("versions", [])],
                "platform": (serving or {}).get("platform", ""),
                "inputs": signature["inputs"],
                "outputs": signature["outputs"],
                "properties": properties,
            }
        )

    async def model_ready(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request)
        if (missing := self._known(name)) is not None:
            return missing
        if version is not None and not any(str(r.get("version")) == version for r in self.records(name)):
            return _error(404, f"version {version!r} of model {name!r} is not loaded")
        if self.ready(name, int(version) if version else None):
            return _json({"name": name, "ready": True})
        reason = self.records(name)[0].get("reason") or "loading"
        return _json({"name": name, "ready": False, "error": f"model {name!r} is not ready: {reason}"}, 503)

    async def unknown_infer(self, name: str, version: str | None = None) -> Response:
        return _error(404, f"unknown model {name!r}; serving {sorted(self.models)}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return to_response(error_reply(status, message, headers))
