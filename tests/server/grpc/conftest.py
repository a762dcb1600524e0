"""A real server with its gRPC port, for tritonclient.grpc (sync and aio) and grpc stubs."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import SlowModel, TinyMLP, example_input
from tests.server.conftest import ServerProcess, reserve_port

KEY = "grpc-test-key"
AUTH = {"x-api-key": KEY}
ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]
CONFIG: dict[str, Any] = {
    "poll_interval": 0.5,
    "api_key": KEY,
    "models": {
        "tiny": {"max_batch_size": 8},
        # a lone request waits up to 1 s for company: a REST and a gRPC request share its batch
        "shared": {"max_batch_size": 8, "batch_timeout_s": 1},
        "slow": {"artifact": "state_dict", "inference_timeout_s": 2},
        "limited": {"max_request_bytes": 2000, "max_rows_per_request": 4},
    },
}


@dataclass
class GrpcServer:
    http: ServerProcess
    grpc_url: str  # host:port, as tritonclient.grpc takes it
    port_holder: socket.socket


def expected(seed: int, rows: list[list[float]]) -> np.ndarray:
    with torch.no_grad():
        return TinyMLP(seed=seed).eval()(torch.tensor(rows)).numpy()


def start_grpc_server(base: Path, store: Path, config: dict[str, Any], name: str = "cwd") -> GrpcServer:
    """A server whose gRPC port is reserved like its HTTP one (bound, never listening)."""
    holder = reserve_port()
    port = holder.getsockname()[1]
    (base / name).mkdir()
    # The environment outranks the YAML file, and the harness may turn gRPC off by default.
    srv = ServerProcess(store, base / name, config, env={"MODELDOCK_GRPC_PORT": str(port)})
    return GrpcServer(srv, f"127.0.0.1:{port}", holder)


@contextlib.contextmanager
def serving_grpc(base: Path, store: Path, config: dict[str, Any]) -> Iterator[GrpcServer]:
    """A started server once every model is ready, stopped (its port released) afterwards."""
    server = start_grpc_server(base, store, config)
    try:
        server.http.wait_until("/v2/health/ready")  # every model (per-model readiness needs the key)
        yield server
    finally:
        server.http.stop()
        server.port_holder.close()


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    base = tmp_path_factory.mktemp("grpc")
    store = ModelStore(base / "models")
    publish_tiny(store, seed=0)
    publish_tiny(store, seed=1)
    publish_tiny(store, name="shared", seed=0)
    publish_tiny(store, name="limited")
    store.publish("slow", SlowModel(), example_inputs=example_input(), model_factory=SlowModel, formats=("state_dict",))
    with serving_grpc(base, store.root, CONFIG) as server:
        yield server
