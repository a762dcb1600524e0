"""The non-infer `/v2` routes (health, server and model metadata, readiness) and `/metrics`.

They run in the HTTP processes and read the status board; infer routes belong to `infer.py`.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from ..config import ModelConfig
from ..errors import ServingError, not_found, unavailable
from ..ipc.board import Board
from ..ipc.messages import WorkerRecord
from ..metrics import exposition
from ..protocol import is_count
from .directory import ModelDirectory
from .replies import check_api_key, error_reply, to_response

EXTENSIONS = [
    "binary_tensor_data",
    "model_repository_versions",
    "golden_output_validation",
    "modeldock_version_labels",  # /v2/models/<m>/labels/<label>/{infer,ready} (docs/versions.md)
    "model_configuration",  # Triton's: /v2/models/<m>[/versions/<v>]/config
    "statistics",  # Triton's: /v2/models[/<m>[/versions/<v>]]/stats
]


def _json(body: Any, status: int = 200) -> Response:
    import orjson

    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Routes:
    """Registers the routes on a FastAPI app for a fixed set of models."""

    def __init__(self, directory: ModelDirectory, board: Board, api_key: str) -> None:
        self.directory = directory
        self.board = board
        self.api_key = api_key

    @property
    def models(self) -> dict[str, ModelConfig]:
        """The models served now (those of the config and those added while serving)."""
        return self.directory.models

    def records(self, name: str) -> list[WorkerRecord]:
        return self.board.records(name, self.directory.workers(name))

    def ready(self, name: str, version: int | None = None) -> bool:
        """The default version (or `version`) is ready in every worker of the model."""
        if version is None:
            return all(r.get("state") == "ready" for r in self.records(name))
        return all(r.get("loaded", {}).get(str(version)) == "ready" for r in self.records(name))

    def _version_state(self, name: str, version: str) -> str:
        """ "ready" in every worker, else the first worker's state; 404 outside the loaded set."""
        records = self.records(name)
        states = [r.get("loaded", {}).get(version) for r in records]
        if not is_count(version) or states[0] is None:
            loaded = sorted(int(v) for v in records[0].get("loaded", {}))
            raise not_found(f"version {version!r} of model {name!r} is not loaded (loaded: {loaded})")
        return "ready" if all(st == "ready" for st in states) else next(st for st in states if st != "ready") or ""

    def _label_version(self, name: str, label: str) -> str:
        version = self.records(name)[0].get("labels", {}).get(label)
        if version is None:
            raise not_found(f"model {name!r} has no label {label!r}")
        return str(version)

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
        waiting = [n for n in self.directory.required if n in self.models and not self.ready(n)]
        if not waiting:
            return _json({"ready": True, "waiting_for": []})
        return _json({"ready": False, "waiting_for": waiting, "error": f"not ready: {waiting}"}, 503)

    async def server_metadata(self, request: Request) -> Response:
        check_api_key(self.api_key, request.headers)
        return _json(
            {
                "name": "modeldock",
                "version": importlib.metadata.version("modeldock"),
                "extensions": EXTENSIONS,
            }
        )

    def check_served(self, name: str) -> None:
        """404 for a model not served now, saying why (removed, or never known)."""
        if name not in self.models:
            gone = self.directory.removed_reason(name)
            why = f"model {name!r} is not served: {gone}" if gone else f"unknown model {name!r}"
            raise not_found(f"{why}; serving {sorted(self.models)}")

    async def model_metadata(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request.headers)
        self.check_served(name)
        records = self.records(name)
        first = records[0]
        serving = next((r for r in records if r.get("version") is not None), None)
        shown = version if version is not None else (str(serving["version"]) if serving else None)
        if version is not None:
            state = self._version_state(name, version)
            if state != "ready":
                raise unavailable(f"version {version} of model {name!r} is {state}")
        holder = next((r for r in records if shown in r.get("signatures", {})), None) if shown else None
        signature = holder["signatures"][shown] if holder and shown else {"inputs": [], "outputs": []}
        properties: dict[str, Any] = {
            "state": first.get("state"),
            "version_policy": self.models[name].policy,
            "default_version": str(serving["version"]) if serving else None,
            "loaded_versions": first.get("loaded", {}),
            "labels": {k: str(v) for k, v in first.get("labels", {}).items()},
            "rejected": first.get("rejected", {}),
            "workers": [{"state": r.get("state"), "version": r.get("version")} for r in records],
        }
        if first.get("reason"):
            properties["reason"] = first["reason"]
        if first.get("rollout_status") or first.get("candidate") is not None:
            properties["rollout"] = {
                "phase": first.get("phase", "stable"),
                "candidate": str(first["candidate"]) if first.get("candidate") is not None else None,
                "status": first.get("rollout_status", ""),
            }
        if holder and shown:
            properties.update(holder.get("servables", {}).get(shown, {}))
        return _json(
            {
                "name": name,
                "versions": [str(v) for v in sorted(int(v) for v in first.get("loaded", {}))],
                "platform": holder["platforms"][shown] if holder and shown else "",
                "inputs": signature["inputs"],
                "outputs": signature["outputs"],
                "properties": properties,
            }
        )

    async def model_ready(self, request: Request, name: str, version: str | None = None) -> Response:
        check_api_key(self.api_key, request.headers)
        self.check_served(name)
        if version is not None:
            state = self._version_state(name, version)
            if state == "ready":
                return _json({"name": name, "ready": True})
            return _json({"name": name, "ready": False, "error": f"version {version} of {name!r} is {state}"}, 503)
        if self.ready(name):
            return _json({"name": name, "ready": True})
        reason = self.records(name)[0].get("reason") or "loading"
        return _json({"name": name, "ready": False, "error": f"model {name!r} is not ready: {reason}"}, 503)

    async def label_ready(self, request: Request, name: str, label: str) -> Response:
        check_api_key(self.api_key, request.headers)
        self.check_served(name)
        return await self.model_ready(request, name, self._label_version(name, label))

    async def unknown_infer(self, name: str, version: str | None = None) -> Response:
        self.check_served(name)  # a model being added answers 404 until its handler exists
        raise not_found(f"model {name!r} is not ready to answer yet")
