"""The servers under test, started the same way: modeldock, the hand-written baseline, Triton.

Matched on purpose: every inference session (modeldock's worker, each baseline process, Triton's
model instance) gets the same explicit intra-op thread count, and the baseline runs as many
uvicorn processes as modeldock runs processes that serve requests (HTTP servers + inference
workers; its main process and queue manager only supervise)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import triton as tr
from bench.common import PY, ServerProcess, free_port
from bench.procs import children, command_line, holders, serves_unix_socket

KINDS = ("baseline", "modeldock", "triton")


@dataclass(frozen=True)
class Setup:
    threads: int = 1
    """onnxruntime intra-op threads of every inference session, on every side."""
    api_servers: int = 1
    workers: int = 1
    max_batch: int = 32
    poll_interval: float = 2.0
    triton_delay_us: int = 5000
    triton: tr.Triton | None = None
    rollout: str = ""
    """modeldock's `defaults.rollout` as a YAML flow mapping (`{mode: off}`); empty: its defaults."""
    extra: str = ""
    """YAML appended to modeldock's config file (bench.profile tries settings with it)."""

    @property
    def baseline_workers(self) -> int:
        return self.api_servers + self.workers

    def describe(self, kind: str) -> str:
        """What a side runs, for the report (process counts are measured separately)."""
        if kind == "modeldock":
            return (
                f"`modeldock serve` with a config file: api_servers {self.api_servers}, workers {self.workers}, "
                f"threads {self.threads} (intra-op), max_batch_size {self.max_batch}, batch_timeout_s 0 "
                f"(dispatch at once), poll_interval {self.poll_interval:g} s"
                + (f", rollout {self.rollout}" if self.rollout else "")
            )
        if kind == "baseline":
            return (
                f"`bench/baseline_server.py`: FastAPI, uvicorn (uvloop, httptools), orjson, no batching; "
                f"{self.baseline_workers} uvicorn worker processes (= modeldock's HTTP servers + inference workers), "
                f"one onnxruntime session each with {self.threads} intra-op thread(s)"
            )
        version = self.triton.pytriton_version if self.triton else "?"
        return (
            f"`tritonserver` from nvidia-pytriton {version}: C++ HTTP front end (default HTTP threads), "
            f"Python backend, 1 model instance running onnxruntime with {self.threads} intra-op thread(s); "
            f"dynamic batching up to {self.max_batch}, {self.triton_delay_us / 1000:g} ms max queue delay"
        )


def _modeldock_config(work: Path, model: str, setup: Setup) -> Path:
    path = work / f"modeldock-{model}.yaml"
    path.write_text(
        f"api_servers: {setup.api_servers}\n"
        "grpc_port: 0\n"  # HTTP is what is measured; a fixed gRPC port could also be taken
        "pool_workers: 0\n"  # no models are added while measured: no idle pool worker beside
        f"poll_interval: {setup.poll_interval}\n"
        "defaults:\n"
        f"  workers: {setup.workers}\n"
        f"  threads: {setup.threads}\n"
        f"  max_batch_size: {setup.max_batch}\n"
        + (f"  rollout: {setup.rollout}\n" if setup.rollout else "")
        + setup.extra
    )
    return path


def start(kind: str, setup: Setup, store: Path, model: str, work: Path) -> ServerProcess:
    """Start one server for `model` (the only model in `store`) on a free port; ready or raises."""
    port = free_port()
    onnx = next((store / model).glob("*/model.onnx"))
    if kind == "modeldock":
        cfg = _modeldock_config(work, model, setup)
        cmd = [PY, "-m", "server", "serve", "--store", str(store), "--config", str(cfg), "--port", str(port)]
        return ServerProcess(kind, [*cmd, "--cache-dir", str(work / "cache")], port, work)
    if kind == "baseline":
        cmd = [PY, "-m", "bench.baseline_server", str(onnx), "--port", str(port)]
        cmd += ["--threads", str(setup.threads), "--workers", str(setup.baseline_workers)]
        return ServerProcess(kind, cmd, port, work)
    if kind == "triton":
        if setup.triton is None:
            raise ValueError("Triton was not located; pass --peers triton")
        repo = tr.model_repository(
            work, setup.triton, model, onnx, setup.threads, setup.max_batch, setup.triton_delay_us
        )
        cmd = tr.command(setup.triton, repo, tr.backend_dir(work, setup.triton), port, free_port(), free_port())
        return ServerProcess(kind, cmd, port, work, env=tr.environment(), ready_s=120)
    raise ValueError(f"unknown server kind {kind!r} (known: {', '.join(KINDS)})")


def roles(kind: str, root: int, port: int) -> dict[int, str]:
    """What each process of a server is, named by role rather than command line."""
    serving = holders(root, port)  # processes holding the listening socket
    found: dict[int, str] = {}
    for pid in sorted(children(root)):
        cmd = command_line(pid)
        if "resource_tracker" in cmd:
            found[pid] = "resource tracker"
        elif kind == "triton":
            found[pid] = "tritonserver" if pid == root else "python backend stub"
        elif kind == "baseline":
            found[pid] = "uvicorn worker" if pid != root or len(serving) == 1 else "uvicorn supervisor"
        elif pid == root:
            found[pid] = "main"
        elif "spawn_main" in cmd:
            # The bench's config has no pool (`pool_workers: 0`): every spawned child is a model's
            # worker. (Telling them apart by their open metric files raced with their first write.)
            found[pid] = "inference worker"
        elif serves_unix_socket(pid):  # LitServe's multiprocessing Manager (forked, like the HTTP servers)
            found[pid] = "queue manager"
        else:
            found[pid] = "HTTP server" if pid in serving else "other"
    return found
