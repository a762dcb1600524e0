"""TorchServe's inference API on the REST port, so its clients and probes keep working after a
move (docs/torchserve.md): `POST /predictions/{model}[/{version}]`, `GET /ping`, and the
describe calls of its management API (`GET /models[/{name}[/{version}]]`, on the admin key).

A predictions body becomes one row as TorchServe's handlers receive it (`{"body": ...}` for a
raw body, one key per field of a multipart form; JSON parsed, text decoded, the rest bytes) and
goes through the model's handler like a v1 instance, batched with every other request. Errors
have TorchServe's shape: `{"code": 404, "type": "ModelNotFoundException", "message": "..."}`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from ..dataplane.auth import check_admin_key
from ..dataplane.events import RequestEvent
from ..dataplane.repository import Repository
from ..dataplane.status import ServingStatus
from ..errors import ServingError, not_found, refused
from ..ipc.messages import Work
from ..protocol import InferRequest, is_count
from .encoding import decode_content
from .infer import VERSION_HEADER, InferHandler
from .replies import JSON, Reply

ERROR_TYPES = {
    400: "BadRequestException",
    401: "InvalidKeyException",
    404: "ModelNotFoundException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
}


def ts_error(error: ServingError) -> Reply:
    """An error as TorchServe words it: code, exception type, message."""
    kind = ERROR_TYPES.get(error.status, "InternalServerException")
    if error.status == 404 and "version" in error.message:
        kind = "ModelVersionNotFoundException"
    body = orjson.dumps({"code": error.status, "type": kind, "message": error.message})
    return Reply(error.status, body, {**JSON, **error.headers})


def _value(data: bytes, content_type: str, charset: str | None) -> Any:
    """A body or form field as TorchServe's worker hands it over: JSON parsed, text decoded."""
    if content_type == "application/json":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ServingError(400, f"the body is not JSON: {e}") from None
    if content_type.startswith("text/"):
        return data.decode(charset or "utf-8", errors="replace")
    return data


def request_row(body: bytes, content_type: str) -> dict[str, Any]:
    """One request's row for the handler: `{"body": value}`, or `{field: value}` for a form."""
    media = content_type.split(";")[0].strip().lower()
    if media != "multipart/form-data":
        return {"body": _value(body, media, None)}
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ServingError(400, "multipart/form-data body without its parts (is the boundary right?)")
    row: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ServingError(400, "a form part has no name (Content-Disposition: form-data; name=...)")
        data = part.get_payload(decode=True)
        media = part.get_content_type() if part.get("content-type") else "text/plain"
        if part.get_filename() is not None and not part.get("content-type"):
            media = "application/octet-stream"  # a file without a declared type: its bytes
        row[name] = _value(data if isinstance(data, bytes) else b"", media, part.get_content_charset())
    if not row:
        raise ServingError(400, "the form has no fields")
    return row


async def predictions(
    endpoint: InferHandler, chunks: bytes | AsyncIterator[bytes], headers: Mapping[str, str], version: str | None
) -> Reply:
    """`POST /predictions/{model}[/{version}]`: the handler's TorchServe response for the body; a
    model without a handler takes a JSON list of rows and answers a list, one per row."""
    started, wall = time.perf_counter(), time.time_ns()
    reply = await _predictions(endpoint, chunks, headers, version)
    if endpoint.observers:  # traces and the payload log see these calls too
        took = time.perf_counter() - started
        endpoint.notify(RequestEvent(endpoint.cfg.name, "torchserve", reply.status, reply.version, headers, wall, took))
    return reply


async def _predictions(
    endpoint: InferHandler, chunks: bytes | AsyncIterator[bytes], headers: Mapping[str, str], version: str | None
) -> Reply:
    name = endpoint.cfg.name
    try:
        if version is not None and (not is_count(version) or int(version) < 1):
            raise not_found(f"model {name!r} has no version {version!r} (modeldock versions are numbers: 1, 2, ...)")
        with endpoint.admitted():
            body = await endpoint._read_body(chunks, headers.get("content-length"))
            body = decode_content(body, headers.get("content-encoding"), endpoint.cfg.max_request_bytes)
            row = request_row(body, headers.get("content-type", "application/octet-stream"))
            if endpoint.cfg.handler:
                instances: list[Any] = [row]
            elif isinstance(row.get("body"), list) and row["body"]:
                instances = row["body"]
            else:
                raise ServingError(400, f"model {name!r} has no handler: send a JSON list of input rows")
            endpoint.check_rows(len(instances))
            work = Work(InferRequest({}, rows=len(instances)), int(version) if version else None, None, name, instances)
            work.torchserve = True
            outcome = await endpoint.submit(work)
        if outcome.status != 200 or outcome.version is None:
            raise refused(outcome.status, outcome.error, outcome.retry_after_s)
    except ServingError as e:
        return ts_error(e)
    answer = outcome.payload[0] if endpoint.cfg.handler else outcome.payload
    extra = {VERSION_HEADER: str(outcome.version)}
    if isinstance(answer, str):
        return Reply(200, answer.encode(), {"content-type": "text/plain; charset=utf-8", **extra}, str(outcome.version))
    content = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Reply(200, content, {**JSON, **extra}, str(outcome.version))


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class TorchServeRoutes:
    """`/ping`, the predictions route of models not served, and the management describe calls."""

    def __init__(self, status: ServingStatus, repository: Repository, admin_key: str) -> None:
        self.status, self.repository, self.admin_key = status, repository, admin_key

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/ping", self.ping, methods=["GET"])
        # Served models' predictions are answered by the edge; only unknown names reach these.
        app.add_api_route("/predictions/{name}", self.unknown, methods=["POST"])
        app.add_api_route("/predictions/{name}/{version}", self.unknown, methods=["POST"])
        if self.admin_key:
            app.add_api_route("/models", self.list_models, methods=["GET"])
            app.add_api_route("/models/{name}", self.describe, methods=["GET"])
            app.add_api_route("/models/{name}/{version}", self.describe, methods=["GET"])

    async def ping(self) -> Response:
        """TorchServe's health probe: Healthy once every model the config requires is ready."""
        if self.status.waiting_for():
            return _json({"status": "Unhealthy"}, 500)
        return _json({"status": "Healthy"})

    async def unknown(self, name: str, version: str | None = None) -> Response:
        gone = self.status.directory.removed_reason(name)
        why = f"model {name!r} is not served: {gone}" if gone else f"Model not found: {name}"
        reply = ts_error(ServingError(404, why))
        return Response(reply.body, status_code=reply.status, headers=reply.headers)

    def _key_refused(self, request: Request) -> Response | None:
        try:
            check_admin_key(self.admin_key, request.headers)
        except ServingError as e:
            reply = ts_error(e)
            return Response(reply.body, status_code=reply.status, headers=reply.headers)
        return None

    async def list_models(self, request: Request) -> Response:
        if (refused := self._key_refused(request)) is not None:
            return refused
        names = sorted(self.status.models)
        return _json({"models": [{"modelName": n, "modelUrl": n} for n in names]})

    async def describe(self, request: Request, name: str, version: str | None = None) -> Response:
        """One entry per loaded version (one, the version named), in TorchServe's fields."""
        if (refused := self._key_refused(request)) is not None:
            return refused
        if name not in self.status.models:
            reply = ts_error(ServingError(404, f"Model not found: {name}"))
            return Response(reply.body, status_code=reply.status, headers=reply.headers)
        cfg = self.status.models[name]
        records = self.status.records(name)
        default = next((r.get("version") for r in records if r.get("version") is not None), None)
        loaded = records[0].get("loaded", {}) if records else {}
        versions = [version] if version is not None else sorted(loaded, key=int)
        if version is not None and version not in loaded:
            reply = ts_error(ServingError(404, f"Model version: {version} does not exist for model: {name}"))
            return Response(reply.body, status_code=reply.status, headers=reply.headers)
        out = []
        for v in versions:
            state = "READY" if all(r.get("loaded", {}).get(v) == "ready" for r in records) else "UNLOADING"
            out.append(
                {
                    "modelName": name,
                    "modelVersion": v,
                    "modelUrl": name,
                    "runtime": "python",
                    "minWorkers": cfg.workers,
                    "maxWorkers": cfg.workers,
                    "batchSize": cfg.max_batch_size,
                    "maxBatchDelay": round(cfg.batch_timeout_s * 1000),
                    "loadedAtStartup": True,
                    "isDefault": str(default) == v,
                    "workers": [
                        {"id": str(i), "status": state, "gpu": cfg.device.startswith("cuda")}
                        for i in range(len(records))
                    ],
                }
            )
        return _json(out)
