"""The supervisor: builds the server from its config, decides versions, runs it; `modeldock serve`.

The main process opens the store, makes the channels between processes, runs one decision point
per model (`control`), and hands LitServe (through its adapter) the workers' plans and the edge.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from model_store import ModelStore, StoreError

from .config import ConfigError, ModelConfig, ServerConfig, from_args
from .control.assembly import ControlFactory, open_store
from .control.config_reload import ConfigReload
from .control.models import ControlLoop, ModelControl
from .control.registry import POOL, Registry, allow_rule
from .control.source import log_new_models
from .dataplane.directory import ModelDirectory
from .dataplane.endpoint import ModelEndpoint
from .dataplane.repository import Repository
from .dataplane.status import ServingStatus
from .grpc.sidecar import GrpcSidecar, GrpcStartError
from .handlers import HandlerNotFound, load_handler
from .http import extensions
from .http.admin import AdminRoutes
from .http.edge import Edge
from .http.infer import InferHandler
from .http.routes import Routes
from .http.torchserve import TorchServeRoutes
from .ipc.board import Board
from .ipc.channels import RequestChannel, ResponseChannels
from .ipc.drain import Drain
from .ipc.messages import AspiredRecord
from .litserve_adapter import LitServeContractError, LitServeHost, Wiring, http_process_index
from .metrics import metrics, setup_multiprocess
from .telemetry import board_phase, build_observers
from .worker.loader import default_threads
from .worker.process import WorkerPlan

log = logging.getLogger("modeldock")
E = TypeVar("E", bound=ModelEndpoint)


def admin_wait_s(cfg: ServerConfig) -> float:
    """How long an admin call waits for the supervisor's poll to apply it (then 202)."""
    return 3 * cfg.poll_interval + 2


class Sidecar(Protocol):
    """A process the supervisor runs beside LitServe's HTTP processes that takes requests to the
    same workers through its own channel slot (e.g. the gRPC server)."""

    def start(self, index: int, directory: ModelDirectory[ModelEndpoint], drain: Drain) -> None:
        """Called once the board is bound, before workers and HTTP processes start."""

    def stop(self) -> None:
        """Called after the drain, before the workers stop."""

    def ensure_running(self) -> None:
        """Called at each poll of the store: start the process again if it died."""


@dataclass
class Supervisor:
    """The main process's view: config, the store, decisions, and the LitServe host."""

    cfg: ServerConfig
    store: ModelStore
    control: ControlLoop
    board: Board
    drain: Drain
    host: LitServeHost
    sidecars: Sequence[Sidecar] = ()
    make_directory: Callable[[Callable[[], int]], ModelDirectory[ModelEndpoint]] | None = None

    def on_shared_dict(self, shared: MutableMapping[str, Any]) -> None:
        """LitServe's Manager is up and no worker has started: publish the first decisions."""
        self.board.bind(shared)
        self.control.publish_all()
        self.control.start()
        assert self.make_directory is not None
        for i, sidecar in enumerate(self.sidecars):
            index = self.cfg.api_servers + i  # channel slots after the HTTP processes'
            sidecar.start(index, self.make_directory(functools.partial(int, index)), self.drain)

    def on_stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()

    def check_sidecars(self) -> None:
        for sidecar in self.sidecars:
            sidecar.ensure_running()


def build_server(
    cfg: ServerConfig, reread: Callable[[], ServerConfig] | None = None, config_path: str = ""
) -> Supervisor:
    store = open_store(cfg)
    names = [m.name for m in cfg.models] if cfg.models else store.models()
    if not names:
        raise StoreError(
            f"store {store.location} has no models; publish one (e.g. `modeldock demo --store {store.location}`)"
        )
    budget = cfg.budget_bytes()  # set: the pool holds every model but the pinned, loaded on demand
    configs = [cfg.model(n) for n in names if cfg.own_workers(n)]
    for mc in [*configs, cfg.defaults]:
        if mc.handler:
            try:
                load_handler(mc.handler)  # a typo is a start-up error, not a rejected version
            except HandlerNotFound as e:
                raise ConfigError(f"model {mc.name or 'defaults'!r}: {e}") from None
    make_control = ControlFactory(cfg, store)
    controls = {mc.name: make_control(mc) for mc in configs}
    for control in controls.values():
        control.poll()  # the first decision before any worker starts
    # TF Serving's rule: a label may only name a loaded version.
    problems = [p for c in controls.values() for p in c.label_problems()]
    if problems:
        raise ConfigError("; ".join(problems))
    board = Board()
    reload = ConfigReload(config_path, reread, list(controls.values())) if reread and config_path else None
    control_loop = ControlLoop(list(controls.values()), board, cfg.poll_interval, reload or (lambda: None))
    control_loop.on_polled = _rollout_metrics
    pooled = cfg.pool_workers > 0
    if pooled:
        allowed = allow_rule(names if cfg.models else None, cfg.allow_models or ("" if cfg.models else "*"))
        registry = Registry(store, board, cfg.model, make_control, allowed, control_loop.models, bool(budget))
        control_loop.discover, control_loop.repository = registry.discover, registry.act
    pool_cfg = dataclasses.replace(cfg.defaults, name=POOL, workers=max(1, cfg.pool_workers))
    control_loop.workers = lambda name: next((c.workers for c in configs if c.name == name), cfg.pool_workers)

    total_workers = sum(mc.workers for mc in configs) + cfg.pool_workers
    watch_s = min(cfg.poll_interval, 0.5)  # workers read the decision often: one cheap IPC read
    plans = [
        WorkerPlan(mc, board, default_threads(mc, total_workers, cfg.api_servers), watch_s, cfg.log_level.upper())
        for mc in configs
    ]
    if pooled:
        threads = default_threads(pool_cfg, total_workers, cfg.api_servers)
        share = budget // cfg.pool_workers  # each pool worker holds its own copies: its share
        level = cfg.log_level.upper()
        plans.append(WorkerPlan(pool_cfg, board, threads, watch_s, level, True, share, cfg.load_timeout_s))
    sidecars: list[Sidecar] = []
    if cfg.grpc_port:
        grpc = GrpcSidecar(cfg.host, cfg.grpc_port, cfg.api_key, configs, board, cfg.grace_period_s)
        grpc.admin_key, grpc.admin_wait_s = cfg.admin_api_key, admin_wait_s(cfg)
        sidecars.append(grpc)
    consumers = cfg.api_servers + len(sidecars)  # every process that submits requests
    requests = {p.cfg.name: RequestChannel(consumers, p.cfg.workers, p.cfg.spin_ms / 1000) for p in plans}
    writers = [(p.cfg.name, w) for p in plans for w in range(p.cfg.workers)]
    responses = ResponseChannels(consumers, writers, [POOL] if budget else [])

    observers = build_observers(cfg, phase_of=board_phase(board))  # traces, payload log: off by default

    def endpoints(kind: type[E], process_index: Callable[[], int]) -> ModelDirectory[E]:
        """One per submitting process (each HTTP process, the gRPC one): its endpoints, and the pool's."""
        handlers = {
            mc.name: kind(mc, cfg.api_servers, requests[mc.name], responses, process_index, observers) for mc in configs
        }

        def make_pool_handler(mc: ModelConfig) -> E:
            return kind(mc, cfg.api_servers, requests[POOL], responses, process_index, observers, POOL)

        return ModelDirectory(configs, board, handlers, make_pool_handler if pooled else None, cfg.pool_workers)

    drain = Drain(consumers, cfg.grace_period_s)
    directory = endpoints(InferHandler, http_process_index)
    status = ServingStatus(directory, board)
    routes = Routes(status, cfg.api_key)
    repository = Repository(directory, board, admin_wait_s(cfg))
    admin = AdminRoutes(repository, cfg.admin_api_key)
    torchserve = TorchServeRoutes(status, repository, cfg.admin_api_key)

    def register_routes(app: Any) -> None:
        # Before the per-model routes: `/v2/models/stats` is not a model named "stats".
        extensions.register(app, status, cfg.api_key)
        admin.register(app)
        torchserve.register(app)
        routes.register(app)

    supervisor: Supervisor

    def on_shared_dict(shared: MutableMapping[str, Any]) -> None:
        supervisor.on_shared_dict(shared)
        if budget:
            registry.discover()  # the store's models are listed (available) before the pool starts
        if pooled:
            registry.publish()

    wiring = Wiring(
        plans=plans,
        requests=requests,
        responses=responses,
        wrap_app=lambda inner: Edge(inner, drain, directory, cfg.api_key, http_process_index),
        register_routes=register_routes,
        on_shared_dict=on_shared_dict,
        on_stop=lambda: supervisor.on_stop(),
        listen_host=cfg.host,
        grace_s=cfg.grace_period_s,
    )
    grpc_endpoints = functools.partial(endpoints, ModelEndpoint)  # gRPC's codec needs no more
    supervisor = Supervisor(cfg, store, control_loop, board, drain, LitServeHost(wiring), sidecars, grpc_endpoints)
    reread_config = control_loop.before_poll

    def before_poll() -> None:
        supervisor.check_sidecars()
        reread_config()

    control_loop.before_poll = before_poll
    return supervisor


def serve(args: argparse.Namespace) -> int:
    try:
        cfg = from_args(args)
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
        setup_multiprocess(cfg.cache_dir)
        # Inductor's ISA probe (aoti's environment check) compiles into its cache: keep it in ours.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.cache_dir) / "inductor"))
        logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        config_path = args.config or os.environ.get("MODELDOCK_CONFIG") or ""
        supervisor = build_server(cfg, lambda: from_args(args), config_path)
    except (ConfigError, StoreError, LitServeContractError) as e:
        print(f"modeldock: error: {e}", file=sys.stderr)
        return 2
    supervisor.drain.install(stop=supervisor.host.stop, seal=supervisor.host.seal)
    names = sorted(supervisor.control.models)
    if not cfg.pool_workers:
        threading.Thread(
            target=log_new_models,
            args=(supervisor.store, set(names), cfg.poll_interval, log.warning),
            name="new-models",
            daemon=True,
        ).start()
    log.info("serving %s from %s on %s:%s", names, cfg.store, cfg.host, cfg.port)
    try:
        supervisor.host.run(cfg.port, cfg.api_servers)
    except GrpcStartError as e:
        print(f"modeldock: error: {e}", file=sys.stderr)
        return 2
    supervisor.control.stop()
    return 0


def _rollout_metrics(model: ModelControl, before: AspiredRecord) -> None:
    """After each poll: the rollout's phase and evidence as gauges."""
    m, name, now = metrics(), model.cfg.name, model.record
    if before.candidate is not None and (before.candidate, before.phase) != (now.candidate, now.phase):
        m.rollout_phase.labels(name, str(before.candidate), before.phase).set(0)
    if now.candidate is not None:
        version, ev = str(now.candidate), model.rollout.evidence
        m.rollout_phase.labels(name, version, now.phase).set(1)
        m.rollout_agreement.labels(name, version).set(ev.agreement)
        m.rollout_latency.labels(name, version).set(ev.latency_ratio)
        m.rollout_errors.labels(name, version).set(ev.errors + ev.canary_failed)
