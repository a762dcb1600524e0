"""Assembles the server: LitServer subclass, models, routes, signals; `modeldock serve`."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import litserve as ls
import uvicorn.server

from model_store import ModelStore, StoreError
from model_store.s3 import S3ModelStore

from .api import ModelAPI
from .board import Board
from .config import ConfigError, ServerConfig, from_args
from .drain import Drain, stop_process
from .edge import Edge, install_edge
from .loader import default_threads
from .metrics import setup_multiprocess
from .routes import Routes
from .source import log_new_models
from .transport import PipeTransport, RequestChannel

log = logging.getLogger("modeldock")
_LITSERVE_HOSTS = ("0.0.0.0", "127.0.0.1", "::")


class ModeldockServer(ls.LitServer):  # type: ignore[misc]
    """LitServer with our routes, a status board, any listen address and graceful SIGTERM."""

    def __init__(self, apis: list[ModelAPI], cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.board: Board | None = None
        super().__init__(
            apis,
            accelerator="cpu",  # devices are chosen per model by our loader, not by LitServe
            workers_per_device={api.api_path: api.cfg.workers for api in apis},
            timeout=False,  # our loop and spec own timeouts
            disable_openapi_url=True,
            restart_workers=True,  # a worker recycled by the inference watchdog comes back
        )
        self.uvicorn_graceful_timeout = cfg.grace_period_s
        self.drain = Drain(cfg.api_servers, cfg.grace_period_s)
        specs = {api.cfg.name: api.spec for api in apis}
        install_edge(self.app, lambda inner: Edge(inner, self.drain, specs, cfg.api_key))
        Routes([a.cfg for a in apis], self._board, cfg.api_key).register(self.app)

    def _shutdown_event_set(self) -> None:
        self._shutdown_event.set()

    def _board(self) -> Board:
        assert self.board is not None, "the board exists once the server runs"
        return self.board

    def _register_internal_endpoints(self) -> None:
        """LitServe's `/`, `/health` and `/info` are replaced by the v2 routes (its readiness keys
        collide for `/v2/models/a/infer` and `/v2/models/b/infer`, and `/info` exposes config)."""

    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)
        # LitServe's Manager queues cost ~2 ms of CPU per request: see transport.py.
        writers = []
        for api in self.litapi_connector:
            self.litapi_request_queues[api.api_path] = RequestChannel(num_api_servers, api.cfg.workers)
            writers += [(api.cfg.name, w) for w in range(api.cfg.workers)]
        self._transport = PipeTransport(num_api_servers, writers, self.response_buffer)
        self.board = Board(manager.dict())
        for api in self.litapi_connector:
            api.board = self.board
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
            stop_process(proc, signal.SIGINT, self.cfg.grace_period_s)
        self._transport.close(send_sentinel=True)
        for proc in workers:
            stop_process(proc, signal.SIGKILL, 5)
        manager.shutdown()
        log.info("stopped")

    def _start_server(
        self,
        port: int,
        num: int,
        log_level: str,
        sockets: list[socket.socket],
        *args: Any,
        **kw: Any,
    ) -> Any:
        if self.cfg.host not in _LITSERVE_HOSTS:
            # LitServe.run accepts three hosts only; it bound the wildcard we passed, rebind here.
            for s in sockets:
                s.close()
            sockets = [_bind(self.cfg.host, port)]
        return super()._start_server(port, num, log_level, sockets, *args, **kw)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def build_server(cfg: ServerConfig) -> ModeldockServer:
    store = ModelStore(cfg.store, cache_dir=cfg.cache_dir or None)
    if isinstance(store, S3ModelStore):
        # Workers get the mirror's path and reopen the bucket from its origin marker.
        root = store.init_mirror()
    else:
        root = store.root
        if not root.is_dir():
            raise StoreError(f"store {root} does not exist")
    names = [m.name for m in cfg.models] if cfg.models else store.models()
    if not names:
        raise StoreError(
            f"store {store.location} has no models; publish one (e.g. `modeldock demo --store {store.location}`)"
        )
    configs = [cfg.model(n) for n in names]
    total_workers = sum(m.workers for m in configs)
    apis = []
    for m in configs:
        api = ModelAPI(
            m,
            root.resolve(),
            cfg.poll_interval,
            cfg.api_servers,
            default_threads(m, total_workers, cfg.api_servers),
        )
        api.api_key = cfg.api_key
        api.log_level = cfg.log_level.upper()
        apis.append(api)
    return ModeldockServer(apis, cfg)


def serve(args: argparse.Namespace) -> int:
    try:
        cfg = from_args(args)
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
        setup_multiprocess(cfg.cache_dir)
        server = build_server(cfg)
    except (ConfigError, StoreError) as e:
        print(f"modeldock: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.drain.install(stop=server._shutdown_event_set)
    # uvicorn's HTTP processes would stop on SIGTERM by themselves; only SIGINT (sent by main
    # after the drain, or by a terminal's Ctrl+C) stops them.
    uvicorn.server.HANDLED_SIGNALS = (signal.SIGINT,)  # type: ignore[assignment]
    served = {a.cfg.name for a in server.litapi_connector}
    threading.Thread(
        target=log_new_models,
        args=(ModelStore(cfg.store), served, cfg.poll_interval, log.warning),
        name="new-models",
        daemon=True,
    ).start()
    host = cfg.host if cfg.host in _LITSERVE_HOSTS else ("::" if ":" in cfg.host else "0.0.0.0")
    log.info(
        "serving %s from %s on %s:%s",
        [a.cfg.name for a in server.litapi_connector],
        cfg.store,
        cfg.host,
        cfg.port,
    )
    server.run(
        host=host,
        port=cfg.port,
        num_api_servers=cfg.api_servers,
        log_level="warning",
        generate_client_file=False,  # LitServe would write client.py into the working directory
        proxy_headers=False,  # one ASGI layer less per request; nothing here reads client addresses
    )
    return 0
