"""The gRPC process: a `grpc.aio` server on its own port, forked by the supervisor.

It reports to the supervisor over a pipe: `("ready", port)` once it listens, or `("failed",
reason)` when it cannot (a port already taken is an error: gRPC's SO_REUSEPORT is turned off, so
two servers never share a port silently). It stops when the supervisor sends "stop" (after the
drain: in-flight calls are answered within the grace period) or when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
from collections.abc import Sequence
from multiprocessing.connection import Connection

import grpc

from ..config import ModelConfig
from ..dataplane.directory import ModelDirectory
from ..dataplane.endpoint import ModelEndpoint
from ..dataplane.repository import Repository
from ..dataplane.status import ServingStatus
from ..ipc.board import Board
from ..ipc.drain import Drain, ignore_termination
from .servicer import Servicer

log = logging.getLogger("modeldock.grpc")
PR_SET_PDEATHSIG = 1


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why_not(host: str, port: int) -> str:
    """gRPC says only "Failed to bind"; a plain bind says why (e.g. address already in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as e:
        return e.strerror.lower() if e.strerror else str(e)
    return "gRPC could not bind it"


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run(
    conn: Connection,
    host: str,
    port: int,
    api_key: str,
    models: Sequence[ModelConfig],
    board: Board,
    directory: ModelDirectory[ModelEndpoint],
    drain: Drain,
    index: int,
    grace_s: float,
    admin_key: str = "",
    admin_wait_s: float = 10.0,
) -> None:
    """The process's body (after the fork)."""
    ignore_termination()  # only the supervisor decides when this process stops
    _die_with_parent()
    repository = Repository(directory, board, admin_wait_s)
    servicer = Servicer(ServingStatus(directory, board), api_key, drain, index, repository, admin_key)
    asyncio.run(_serve(conn, host, port, servicer, grace_s, models))


async def _serve(
    conn: Connection, host: str, port: int, servicer: Servicer, grace_s: float, models: Sequence[ModelConfig]
) -> None:
    limit = max(m.max_request_bytes for m in models)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limit),  # larger requests: RESOURCE_EXHAUSTED
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers(servicer.generic_handlers())
    where = address(host, port)
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError:
        bound = 0
    if bound == 0:
        conn.send(
            ("failed", f"gRPC cannot listen on {where}: {_why_not(host, port)} (set grpc_port, or 0 to turn gRPC off)")
        )
        return
    await server.start()
    conn.send(("ready", bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), stop.set)  # "stop", or EOF when the supervisor is gone
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await server.stop(grace_s)  # new calls refused; in-flight ones finish within the grace period
    with contextlib.suppress(OSError):
        conn.send(("stopped", 0))
