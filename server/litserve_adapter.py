"""The one door to LitServe: every import of `litserve`, every private hook, its environment.

LitServe is the process model (HTTP processes forked per `api_servers`, one spawned worker
process per model worker, restart of a dead worker) and the edge's web app. Everything else is
ours and reaches LitServe only through `LitServeHost`:

- requests and answers travel on our channels (`ipc.channels`), installed in place of
  LitServe's Manager queues (four IPC round trips per request) and message transport;
- each worker runs our `ModelWorker` through a minimal LitAPI and LitLoop;
- our ASGI edge wraps LitServe's FastAPI app, our routes replace its `/`, `/health`, `/info`;
- SIGTERM drains (LitServe 0.2.19 dies on it and orphans its children): see `ipc.drain`.

The private hooks this relies on are listed in `CONTRACT` and checked at start-up, so a LitServe
upgrade that moves one fails at once with its name, not in production. Keep the pin.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import litserve as ls
import litserve.loops.loops
import litserve.server
import uvicorn.server
from fastapi import FastAPI
from litserve.loops.base import LitLoop
from litserve.transport.base import MessageTransport
from starlette.middleware.gzip import GZipMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .http import ticker
from .http.wire import edge_protocol
from .ipc.channels import RequestChannel, ResponseChannels
from .ipc.drain import stop_process
from .worker.process import ModelWorker, WorkerPlan

log = logging.getLogger(__name__)
LITSERVE_HOSTS = ("0.0.0.0", "127.0.0.1", "::")  # LitServer.run accepts no other listen address
_PROCESS_INDEX = "LITSERVE_WORKER_ID"  # LitServe numbers HTTP processes and workers here


def http_process_index() -> int:
    """Which of the HTTP processes this is (0 .. api_servers - 1)."""
    return int(os.environ.get(_PROCESS_INDEX, "0"))


# ---- the contract: each private hook or shape of LitServe this module relies on -------------
@dataclass(frozen=True)
class Hook:
    owner: str  # key into the classes checked
    name: str
    params: tuple[str, ...] = ()  # leading parameter names, in order (self excluded)
    source_mentions: str = ""  # a name the hook's source must mention


CONTRACT: tuple[Hook, ...] = (
    Hook("LitServer", "__init__", ("lit_api", "accelerator", "devices", "workers_per_device", "timeout")),
    Hook("LitServer", "run", ("host", "port", "num_api_servers", "log_level", "generate_client_file")),
    Hook("LitServer", "_init_manager", ("num_api_servers",)),
    Hook("LitServer", "_perform_graceful_shutdown", ("manager", "uvicorn_workers", "shutdown_reason")),
    Hook("LitServer", "_start_server", ("port", "num_uvicorn_servers", "log_level", "sockets", "uvicorn_worker_type")),
    Hook("LitServer", "_register_internal_endpoints"),
    Hook("LitServer", "launch_inference_worker", ("lit_api",), "_get_request_queue"),
    Hook("LitServer", "_get_request_queue", ("api_path",), "litapi_request_queues"),
    Hook("LitAPI", "__init__", ("max_batch_size", "batch_timeout", "api_path", "stream", "loop")),
    Hook("LitLoop", "run", ("lit_api", "device", "worker_id", "request_queue", "transport")),
    # Our transport is only ever awaited by LitServe's consumer task (which reads nothing) and
    # closed at shutdown; its own base class's signatures are looser than these calls.
    Hook("response_queue_to_buffer", "__call__", ("transport", "response_buffer", "consumer_id"), "areceive("),
    Hook("MessageTransport", "areceive"),
    Hook("_Server", "run", ("worker_id", "sockets"), _PROCESS_INDEX),
    Hook(
        "inference_worker", "__call__", ("lit_api", "device", "worker_id", "request_queue", "transport"), _PROCESS_INDEX
    ),
    # uvicorn's, reached through LitServer.run's keyword arguments (http/wire.py subclasses it).
    Hook("HttpToolsProtocol", "__init__", ("config", "server_state", "app_state"), "self.app = config.loaded_app"),
    Hook("HttpToolsProtocol", "connection_made", ("transport",), "self.transport = transport"),
    # uvicorn's server loop, replaced on LitServe's subclass by http/ticker.py's.
    Hook("UvicornServer", "main_loop", (), "self.on_tick(counter)"),
    Hook("UvicornServer", "on_tick", ("counter",), "self.should_exit"),
    Hook("UvicornServer", "handle_exit", ("sig", "frame")),
    Hook("UvicornServer", "capture_signals", (), "self.handle_exit"),
)


def _litserve_parts() -> dict[str, Any]:
    return {
        "LitServer": ls.LitServer,
        "LitAPI": ls.LitAPI,
        "LitLoop": LitLoop,
        "MessageTransport": MessageTransport,
        "_Server": litserve.server._Server,
        "response_queue_to_buffer": litserve.server.response_queue_to_buffer,
        "inference_worker": litserve.loops.loops.inference_worker,
        "HttpToolsProtocol": HttpToolsProtocol,
        "UvicornServer": uvicorn.server.Server,
    }


def contract_problems(parts: Mapping[str, Any] | None = None, hooks: Sequence[Hook] = CONTRACT) -> list[str]:
    """Every hook of `hooks` missing from `parts` (LitServe's real classes by default) or changed."""
    parts = _litserve_parts() if parts is None else parts
    problems = []
    for hook in hooks:
        owner = parts.get(hook.owner)
        target = owner if hook.name == "__call__" and inspect.isfunction(owner) else getattr(owner, hook.name, None)
        where = f"{hook.owner}.{hook.name}" if hook.name != "__call__" else hook.owner
        if owner is None or target is None or not callable(target):
            problems.append(f"{where} is missing")
            continue
        try:
            names = [p for p in inspect.signature(target).parameters if p != "self"]
        except (TypeError, ValueError):
            names = []
        if tuple(names[: len(hook.params)]) != hook.params:
            problems.append(f"{where} takes {tuple(names)}; expected it to start with {hook.params}")
        if hook.source_mentions:
            try:
                source = inspect.getsource(target)
            except (OSError, TypeError):
                source = ""
            if hook.source_mentions not in source:
                problems.append(f"{where} no longer uses {hook.source_mentions}")
    if not hasattr(uvicorn.server, "HANDLED_SIGNALS"):
        problems.append("uvicorn.server.HANDLED_SIGNALS is missing")
    return problems


class LitServeContractError(RuntimeError):
    """The installed LitServe is not the one this adapter was written against."""


def check_contract() -> None:
    problems = contract_problems()
    if problems:
        raise LitServeContractError(
            f"litserve {getattr(ls, '__version__', '?')} does not fit modeldock's adapter: " + "; ".join(problems)
        )


# ---- the shims LitServe drives ---------------------------------------------------------------
class _Answers(MessageTransport):  # type: ignore[misc]
    """LitServe's transport slot: hands workers our response channels; LitServe's own consumer
    task (started by its lifespan) has nothing to read and just waits."""

    def __init__(self, responses: ResponseChannels) -> None:
        self.responses = responses

    def send(self, item: Any, consumer_id: int) -> None:
        raise NotImplementedError("modeldock's workers answer through ResponseChannels")

    async def areceive(self, *args: Any, **kwargs: Any) -> Any:
        import asyncio

        await asyncio.get_running_loop().create_future()  # cancelled at shutdown

    def close(self, send_sentinel: bool = True) -> None:
        """Nothing to flush: HTTP processes stop reading when they stop."""


class _Loop(LitLoop):  # type: ignore[misc]
    def run(self, lit_api: Any, device: Any, worker_id: int, request_queue: Any, transport: Any, *_: Any) -> None:
        lit_api.worker.serve_round(request_queue, transport.responses)


class _ModelAPI(ls.LitAPI):  # type: ignore[misc]
    """Carries one model's WorkerPlan into its worker processes, where `setup` starts it."""

    def __init__(self, plan: WorkerPlan) -> None:
        super().__init__(
            max_batch_size=plan.cfg.max_batch_size,
            batch_timeout=plan.cfg.batch_timeout_s,
            api_path=f"/v2/models/{plan.cfg.name}/infer",  # the edge answers this path first
            loop=_Loop(),
        )
        self.plan = plan
        self.worker: ModelWorker | None = None

    def setup(self, device: Any) -> None:
        self.worker = ModelWorker.start(self.plan, int(os.environ.get(_PROCESS_INDEX, "0")))

    # LitServe's per-request hooks; our loop calls the worker instead.
    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe reads the annotation
        return request

    def predict(self, x: Any) -> Any:
        return x

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return output


@dataclass
class Wiring:
    """What the supervisor plugs into LitServe."""

    plans: Sequence[WorkerPlan]
    requests: Mapping[str, RequestChannel]  # per model
    responses: ResponseChannels
    wrap_app: Callable[[Any], Any]  # ASGI app -> our edge around it
    register_routes: Callable[[FastAPI], None]
    on_shared_dict: Callable[[MutableMapping[str, Any]], None]  # before any process starts
    on_stop: Callable[[], None]  # after the drain and the HTTP processes, before the workers
    listen_host: str
    grace_s: float


# Attributes of a LitServer instance that the hooks below read or replace.
_SERVER_ATTRIBUTES = (
    "app",
    "litapi_connector",
    "litapi_request_queues",
    "_shutdown_event",
    "uvicorn_graceful_timeout",
)


class _Server(ls.LitServer):  # type: ignore[misc]
    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        apis = [_ModelAPI(p) for p in wiring.plans]
        super().__init__(
            apis,
            accelerator="cpu",  # devices are chosen per model by our loader, not by LitServe
            workers_per_device={api.api_path: api.plan.cfg.workers for api in apis},
            timeout=False,  # our handler and worker own timeouts
            disable_openapi_url=True,
            restart_workers=True,  # a worker recycled by the inference watchdog comes back
        )
        missing = [a for a in _SERVER_ATTRIBUTES if not hasattr(self, a)]
        if missing:
            raise LitServeContractError(f"LitServer no longer sets {missing}")
        self.uvicorn_graceful_timeout = wiring.grace_s
        # LitServe gzips every other response of 1,000 bytes or more when the client accepts
        # gzip: tritonclient.http.aio (aiohttp, decompression off) then fails to read metadata.
        # Triton compresses only infer responses, and only when asked; infer never went through
        # this middleware here, so nothing is compressed.
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]
        wiring.register_routes(self.app)

    def _register_internal_endpoints(self) -> None:
        """LitServe's `/`, `/health` and `/info` are replaced by the v2 routes (its readiness keys
        collide for `/v2/models/a/infer` and `/v2/models/b/infer`, and `/info` exposes config)."""

    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)
        for api in self.litapi_connector:
            self.litapi_request_queues[api.api_path] = self.wiring.requests[api.plan.cfg.name]
        self._transport = _Answers(self.wiring.responses)
        self.wiring.on_shared_dict(manager.dict())
        return manager

    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: dict[int, Any], shutdown_reason: str = "normal"
    ) -> None:
        """After the drain: stop the HTTP processes (SIGINT: uvicorn finishes what it accepted),
        then the idle workers, then the queue manager. LitServe's version sends SIGTERM, which
        every child here ignores so that a process-group SIGTERM cannot cut requests short."""
        workers: list[Any] = list(self.inference_workers)
        self.inference_workers.clear()  # LitServe's monitor must not restart them
        for proc in uvicorn_workers.values():
            stop_process(proc, signal.SIGINT, self.wiring.grace_s)
        self.wiring.on_stop()
        for proc in workers:
            stop_process(proc, signal.SIGKILL, 5)
        manager.shutdown()
        log.info("stopped")

    def _start_server(
        self, port: int, num: int, log_level: str, sockets: list[socket.socket], *args: Any, **kw: Any
    ) -> Any:
        host = self.wiring.listen_host
        if host not in LITSERVE_HOSTS:
            # LitServe.run accepts three hosts only; it bound the wildcard we passed, rebind here.
            for s in sockets:
                s.close()
            sockets = [_bind(host, port)]
        self.listeners = list(sockets)  # the same kernel socket as the HTTP processes': see seal()
        return super()._start_server(port, num, log_level, sockets, *args, **kw)


_SO_ATTACH_FILTER = 26  # Linux


def seal_listener(sock: socket.socket) -> bool:
    """Attach a classic BPF program that drops every packet (`ret #0`) to a listening socket:
    new SYNs are dropped instead of queued. Linux only; elsewhere a no-op (False)."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog (the kernel copies it)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as e:
        log.warning("could not seal the listener before the drain: %s", e)
        return False
    return True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class LitServeHost:
    """Runs the server's processes with LitServe; `stop` (from the drain) ends `run`."""

    def __init__(self, wiring: Wiring) -> None:
        check_contract()
        self._server = _Server(wiring)
        self.wiring = wiring

    def stop(self) -> None:
        self._server._shutdown_event.set()

    def seal(self) -> None:
        """At the start of a drain: the listener takes no new connection, while the HTTP
        processes still accept (and answer 503 to) those already queued. Closing a listener
        resets the connections queued on it; sealed first, nothing is queued by then, and a
        client connecting later is refused cleanly (its SYN is dropped, its retry finds the port
        closed)."""
        for sock in getattr(self._server, "listeners", []):
            seal_listener(sock)

    def run(self, port: int, api_servers: int) -> None:
        """Blocks until `stop`; the HTTP processes stop on SIGINT only (sent after the drain)."""
        # uvicorn's HTTP processes would stop on SIGTERM by themselves.
        uvicorn.server.HANDLED_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]
        # An idle HTTP process wakes once a second, not ten times (http/ticker.py).
        litserve.server._Server.main_loop = ticker.main_loop
        litserve.server._Server.handle_exit = ticker.handle_exit
        host = self.wiring.listen_host
        bind_host = host if host in LITSERVE_HOSTS else ("::" if ":" in host else "0.0.0.0")
        self._server.run(
            host=bind_host,
            port=port,
            num_api_servers=api_servers,
            log_level="warning",
            generate_client_file=False,  # LitServe would write client.py into the working directory
            proxy_headers=False,  # one ASGI layer less per request; nothing here reads client addresses
            http=edge_protocol(self.wiring.wrap_app),  # our edge outermost; one write per response
        )
