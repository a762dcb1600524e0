"""`inference.GRPCInferenceService` (Triton's superset of the Open Inference Protocol's service)
and `grpc.health.v1.Health`, on the same handlers, board and rules as REST.

A codec over the data plane, like REST: readiness and metadata from `dataplane.status`, the
repository extension from `dataplane.repository`, infer through the model's `ModelEndpoint`
(so a gRPC request and a REST request may share a batch). A call cancelled by its client or
past its deadline (`grpc-timeout`) is dropped from the workers' queue unrun. Every refusal is a ServingError, mapped to a gRPC status the way Triton maps its
errors (`codec.GRPC_CODES`). Calls we do not serve answer UNIMPLEMENTED, naming the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from prometheus_client import Counter, Histogram

from ..dataplane.auth import api_key_problem, check_admin_key
from ..dataplane.events import RequestEvent
from ..dataplane.repository import Repository
from ..dataplane.status import ServingStatus
from ..dataplane.triton import model_config, model_statistics
from ..errors import ServingError, not_found
from ..ipc.drain import Drain
from ..metrics import LATENCY_BUCKETS
from ..protocol import is_count
from .codec import decode_request, encode_response, grpc_code_name
from .gen import grpc_service_pb2 as pb
from .gen import health_pb2

SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class GrpcMetrics:
    """gRPC's own series, beside (not inside) the REST ones, whose labels and meaning stay:
    `code` is the gRPC status name (OK, NOT_FOUND, ...)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "modeldock_grpc_requests_total",
            "gRPC ModelInfer calls answered, by gRPC status",
            ["model", "version", "code"],
        )
        self.latency = Histogram(
            "modeldock_grpc_request_duration_seconds", "gRPC ModelInfer time", ["model"], buckets=LATENCY_BUCKETS
        )


def _version(name: str, version: str) -> int | None:
    if not version:
        return None
    if not is_count(version) or int(version) < 1:
        raise not_found(f"model {name!r} has no version {version!r}")
    return int(version)


class Servicer:
    """The service's methods; `index` is this process's slot in the drain counters."""

    def __init__(
        self,
        status: ServingStatus,
        api_key: str,
        drain: Drain,
        index: int,
        repository: Repository | None = None,
        admin_key: str = "",
    ) -> None:
        self.status, self.api_key = status, api_key
        self.repository, self.admin_key = repository, admin_key  # the repository extension (off without a key)
        self.drain, self.index = drain, index
        self.metrics = GrpcMetrics()
        self._children: dict[tuple[str, str, str], Any] = {}

    # ---- plumbing ---------------------------------------------------------------------------
    def _wrap(self, method: Method, public: bool = False, while_draining: bool = False) -> Method:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.drain.flag.is_set() and not while_draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica")
            counter = self.drain.inflight[self.index]
            counter.value += 1
            try:
                if not public:
                    problem = api_key_problem(self.api_key, dict(context.invocation_metadata() or ()))
                    if problem is not None:
                        raise problem
                return await method(request, context)
            except ServingError as e:
                await context.abort(getattr(grpc.StatusCode, grpc_code_name(e)), e.message)
            finally:
                counter.value -= 1

        return call

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        served: dict[str, tuple[Method, Any, bool, bool]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, True, True),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, True, False),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, False, False),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, False, False),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, False, False),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, False, False),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, False, False),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest, False, False),
        }
        if self.repository is not None and self.admin_key:
            # The admin key, not the inference key, guards these (checked in each method).
            served |= {
                "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, True, False),
                "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest, True, False),
                "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest, True, False),
            }
        methods = {}
        for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            if m.name in served:
                fn, request_type, public, while_draining = served[m.name]
                methods[m.name] = grpc.unary_unary_rpc_method_handler(
                    self._wrap(fn, public, while_draining),
                    request_deserializer=request_type.FromString,
                    response_serializer=lambda r: r.SerializeToString(),
                )
            else:
                methods[m.name] = _unimplemented(SERVICE, m.name, m.client_streaming, m.server_streaming)
        health = {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._wrap(self.health_check, public=True, while_draining=True),
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=lambda r: r.SerializeToString(),
            ),
            "Watch": _unimplemented(HEALTH, "Watch", False, True),
        }
        return [
            grpc.method_handlers_generic_handler(SERVICE, methods),
            grpc.method_handlers_generic_handler(HEALTH, health),
        ]

    # ---- the repository extension (admin key) ---------------------------------------------------
    def _admin(self, context: Any) -> Repository:
        assert self.repository is not None
        check_admin_key(self.admin_key, dict(context.invocation_metadata() or ()))
        return self.repository

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        entries = self._admin(context).index()
        if request.ready:
            entries = [e for e in entries if e["state"] == "READY"]
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=e["name"], version=e.get("version", ""), state=e["state"], reason=e["reason"]
            )
            for e in entries
        ]
        return pb.RepositoryIndexResponse(models=models)

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self._admin(context).model(request.model_name, "load")
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self._admin(context).model(request.model_name, "unload")
        return pb.RepositoryModelUnloadResponse()

    # ---- health and metadata --------------------------------------------------------------------
    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.status.waiting_for())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=not self.status.model_unready(request.name, request.version or None))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        doc = self.status.server_metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.status.model_metadata(request.name, request.version or None)
        resp = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for t in meta.inputs:
            resp.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in meta.outputs:
            resp.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        resp = pb.ModelConfigResponse()
        json_format.ParseDict(model_config(self.status, request.name, request.version or None), resp.config)
        return resp

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        doc = model_statistics(self.status, request.name or None, request.version or None)
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse())

    async def health_check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """SERVING when every model is ready (service "") or the named model is."""
        status = health_pb2.HealthCheckResponse
        if self.drain.flag.is_set():
            return status(status=status.NOT_SERVING)
        if request.service and request.service not in self.status.models:
            raise not_found(f"unknown service {request.service!r}; ask for '' or one of {sorted(self.status.models)}")
        names = [request.service] if request.service else list(self.status.models)
        ready = all(self.status.ready(n) for n in names)
        return status(status=status.SERVING if ready else status.NOT_SERVING)

    # ---- infer --------------------------------------------------------------------------------
    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        name = request.model_name
        handler = self.status.directory.handler(name)  # the pool's models too; None once removed
        if handler is None:  # not counted: a label per unknown name would grow without bound
            self.status.check_served(name)
            raise not_found(f"model {name!r} is not served")
        started, wall, code, answered, status = time.perf_counter(), time.time_ns(), "OK", "", 200
        seen: dict[str, Any] = {}  # what the request observers (traces, payload log) see
        try:
            version = _version(name, request.model_version)
            size, limit = request.ByteSize(), handler.cfg.max_request_bytes
            if size > limit:
                raise ServingError(413, f"request of {size} bytes is over the limit of {limit}")
            with handler.admitted():
                req = seen["request"] = decode_request(request, handler.max_elements)
                # The client's deadline goes with the request: past it, the workers drop it unrun.
                got, outputs = await handler.infer(req, version, seen=seen, deadline_s=context.time_remaining())
            answered = str(got)
            return encode_response(name, got, req, outputs)
        except ServingError as e:
            code, status, seen["error"] = grpc_code_name(e), e.status, e.message
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code, status = "CANCELLED", 0
            raise
        finally:
            took = time.perf_counter() - started
            self._count(name, answered, code, took)
            if handler.observers and status:  # as REST's: status is the HTTP equivalent
                metadata = context.invocation_metadata() or ()
                headers = {k: v for k, v in metadata if isinstance(v, str)}  # traceparent travels here
                handler.notify(RequestEvent(name, "grpc", status, answered, headers, wall, took, **seen))

    def _count(self, model: str, version: str, code: str, seconds: float) -> None:
        key = (model, version, code)
        child = self._children.get(key)
        if child is None:  # label lookups cost more than the increment: keep the children
            child = self._children[key] = self.metrics.requests.labels(model, version, code)
        child.inc()
        self.metrics.latency.labels(model).observe(seconds)


def _unimplemented(service: str, method: str, client_streaming: bool, server_streaming: bool) -> grpc.RpcMethodHandler:
    message = f"{service}/{method} is not served by modeldock"

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield  # pragma: no cover  (makes this an async generator)

    ident = {"request_deserializer": None, "response_serializer": None}
    if client_streaming and server_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **ident)
    if client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **ident)
    if server_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **ident)
    return grpc.unary_unary_rpc_method_handler(unary, **ident)
