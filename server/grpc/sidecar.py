"""The supervisor's side of the gRPC process (a `server.app.Sidecar`). Imports no grpc: the
gRPC core must start in the forked process only (it is not fork-safe once running)."""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..config import ModelConfig
from ..dataplane.directory import ModelDirectory
from ..dataplane.endpoint import ModelEndpoint
from ..ipc.board import Board
from ..ipc.drain import Drain

log = logging.getLogger("modeldock.grpc")


class GrpcStartError(RuntimeError):
    """The gRPC server could not start (its port is taken, most often); the server must not run."""


def _child(conn: Connection, *args: Any) -> None:
    from .process import run  # grpc is imported here, after the fork

    run(conn, *args)


class GrpcSidecar:
    """Runs the gRPC server in one process beside the HTTP processes, on its own channel slot."""

    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        models: Sequence[ModelConfig],
        board: Board,
        grace_s: float,
        start_timeout_s: float = 60.0,
        admin_key: str = "",
        admin_wait_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.api_key = host, port, api_key
        self.admin_key, self.admin_wait_s = admin_key, admin_wait_s
        self.models, self.board, self.grace_s = list(models), board, grace_s
        self.start_timeout_s = start_timeout_s
        self._proc: Any = None
        self._conn: Connection | None = None
        self._started_with: tuple[int, ModelDirectory[ModelEndpoint], Drain] | None = None
        self._stopping = False

    def start(self, index: int, directory: ModelDirectory[ModelEndpoint], drain: Drain) -> None:
        """Forks the gRPC process and waits until it listens; raises GrpcStartError if it cannot."""
        self._started_with = (index, directory, drain)
        ctx = mp.get_context("fork")
        conn, child_conn = ctx.Pipe()
        args: tuple[Any, ...] = (self.host, self.port, self.api_key, self.models, self.board, directory)
        args += (drain, index, self.grace_s, self.admin_key, self.admin_wait_s)
        self._proc = ctx.Process(target=_child, args=(child_conn, *args), name="modeldock-grpc")
        self._proc.start()
        child_conn.close()
        self._conn = conn
        atexit.register(self._kill)  # runs before multiprocessing's own exit hook joins children
        message: tuple[str, Any] = ("failed", f"it did not report within {self.start_timeout_s:g}s")
        try:
            if conn.poll(self.start_timeout_s):
                message = conn.recv()
        except EOFError:
            self._proc.join(5)
            message = ("failed", f"its process exited with code {self._proc.exitcode}")
        if message[0] != "ready":
            self._kill()
            raise GrpcStartError(f"gRPC server did not start: {message[1]}")
        log.info("gRPC serving on %s:%s (pid %s)", self.host, message[1], self._proc.pid)

    def ensure_running(self) -> None:
        """Starts the gRPC process again if it died (killed, out of memory): gRPC clients must not
        stay refused while REST answers. Called from the supervisor's poll; never once stopping."""
        if self._stopping or self._proc is None or self._proc.is_alive() or self._started_with is None:
            return
        index, directory, drain = self._started_with
        if drain.flag.is_set():
            return
        log.error("gRPC process %s exited with code %s; starting it again", self._proc.pid, self._proc.exitcode)
        drain.inflight[index].value = 0  # its calls in flight died with it
        if self._conn is not None:
            self._conn.close()  # the dead process's pipe; start() opens a new one
        try:
            self.start(index, directory, drain)
        except GrpcStartError as e:
            log.error("%s; trying again at the next poll", e)

    def stop(self) -> None:
        """After the drain: the process answers its in-flight calls, then exits."""
        self._stopping = True
        if self._proc is None or self._conn is None:
            return
        try:
            self._conn.send(("stop", 0))
            if self._conn.poll(self.grace_s + 5):
                self._conn.recv()
        except (OSError, EOFError):
            pass
        self._proc.join(5)
        self._kill()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            log.warning("gRPC process %s did not stop; killing it", self._proc.pid)
            self._proc.kill()
            self._proc.join(5)
