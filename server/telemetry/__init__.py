"""Traces and payload logs: observers of answered requests, both off by default (docs/observability.md).

`build_observers` runs in the supervisor, before LitServe forks the HTTP processes; each observer
starts its threads on first use in the process that uses it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..config import ConfigError, ServerConfig
from ..dataplane.events import RequestObserver
from .logfile import STDOUT
from .phase import PhaseOf, board_phase

__all__ = ["board_phase", "build_observers"]

log = logging.getLogger(__name__)
MiB = 1 << 20


def build_observers(
    cfg: ServerConfig, phase_of: PhaseOf | None = None, env: Mapping[str, str] | None = None
) -> list[RequestObserver]:
    """The observers the config asks for; ConfigError names a setting that cannot work.

    `phase_of` (e.g. `board_phase(board)`) adds the rollout phase to each span."""
    env = os.environ if env is None else env
    observers: list[RequestObserver] = []
    if cfg.tracing:
        from . import tracing  # the SDK is imported only when tracing is on

        problems = tracing.env_problems(env)
        if problems:
            raise ConfigError(f"tracing: {'; '.join(problems)}")
        if tracing.disabled(env):
            log.info("tracing is on but OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none turns it off")
        else:
            observers.append(tracing.Tracing(phase_of=phase_of))
    if cfg.payload_log:
        from .payload_log import PayloadLog

        destination = cfg.payload_log if cfg.payload_log == STDOUT else _writable(cfg.payload_log)
        observers.append(
            PayloadLog(
                destination,
                sample=cfg.payload_log_sample,
                responses=cfg.payload_log_responses,
                tensors=cfg.payload_log_tensors,
                max_bytes=cfg.payload_log_max_mb * MiB,
            )
        )
    return observers


def _writable(path: str) -> str:
    """The file's absolute path, once it is known that it can be appended to (checked at start)."""
    resolved = Path(path).expanduser().absolute()
    if resolved.is_dir():
        raise ConfigError(f"payload_log {path!r} is a folder; name a file in it (or `stdout`)")
    try:
        with resolved.open("ab"):
            pass
    except OSError as e:
        raise ConfigError(f"payload_log {path!r} cannot be written: {e.strerror}") from None
    return str(resolved)
