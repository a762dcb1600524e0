"""Typed settings: YAML file < MODELDOCK_* environment < command-line flags, checked at start."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_store.policy import VersionPolicy

ARTIFACTS = ("auto", "onnx", "torchscript", "state_dict", "pickle")
MiB = 1 << 20


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and what is allowed."""


@dataclass
class ModelConfig:
    """How one model is served."""

    name: str = ""
    policy: str = "latest"
    """`latest`, `best:<metric>[:min]` or `pinned:<n>`."""
    artifact: str = "auto"
    """`auto` (ONNX on CPU), or one format: `onnx`, `torchscript`, `state_dict`, `pickle`."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`."""
    max_batch_size: int = 32
    """Rows per batch; a larger request runs alone, in chunks of this size."""
    batch_timeout_s: float = 0.0
    """Extra wait for a fuller batch. 0: dispatch at once, batching whatever queued meanwhile."""
    workers: int = 1
    threads: int = 0
    """Intra-op threads per worker; 0 picks cores / (workers + API servers)."""
    trust_pickle: bool = False
    inference_timeout_s: float = 30.0
    """A predict running longer answers 504 and its worker is recycled."""
    max_queued_requests: int = 0
    """Requests waiting or running per model before 503; 0 means 8 x max_batch_size x workers."""
    max_request_bytes: int = 64 * MiB
    max_rows_per_request: int = 65536

    def queue_limit(self) -> int:
        return self.max_queued_requests or 8 * self.max_batch_size * self.workers


@dataclass
class ServerConfig:
    """The whole server."""

    store: str = "models"
    host: str = "127.0.0.1"
    port: int = 8000
    poll_interval: float = 2.0
    cache_dir: str = ""
    api_key: str = ""
    api_servers: int = 1
    grace_period_s: float = 25.0
    log_level: str = "info"
    models: list[ModelConfig] | None = None
    """Models to serve; None serves every model found in the store at start-up."""
    defaults: ModelConfig = field(default_factory=ModelConfig)

    def model(self, name: str) -> ModelConfig:
        for m in self.models or []:
            if m.name == name:
                return m
        return dataclasses.replace(self.defaults, name=name)


_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_SERVER_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)} | {"poll-interval": None}


def default_cache_dir(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "modeldock")


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Convert YAML/env values to the field's type, naming the setting on failure."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def _model(where: str, raw: Any, base: ModelConfig, name: str) -> ModelConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    values = {}
    for key, value in raw.items():
        if key not in _MODEL_FIELDS or key == "name":
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {sorted(set(_MODEL_FIELDS) - {'name'})})")
        values[key] = _coerce(f"{where}.{key}", value, getattr(base, key))
    return dataclasses.replace(base, name=name, **values)


def load_yaml(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return raw


def build(file: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]) -> ServerConfig:
    """Merge the three layers (later wins) and check every value."""
    cfg = ServerConfig()
    unknown = set(file) - set(_SERVER_FIELDS)
    if unknown:
        raise ConfigError(f"config: unknown setting(s) {sorted(unknown)} (known: {sorted(_SERVER_FIELDS)})")
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("config", {k: v for k, v in file.items() if k not in ("models", "defaults")}),
        (
            "env",
            {k[len("MODELDOCK_") :].lower(): v for k, v in env.items() if k.startswith("MODELDOCK_")},
        ),
        ("flag", {k: v for k, v in flags.items() if v is not None}),
    ]
    for origin, layer in layers:
        for key, value in layer.items():
            if key in ("config",):
                continue
            if key not in _SERVER_FIELDS or key in ("models", "defaults"):
                if origin == "env":
                    raise ConfigError(f"environment: unknown variable MODELDOCK_{key.upper()}")
                raise ConfigError(f"{origin}: unknown setting {key!r}")
            setattr(cfg, key, _coerce(f"{origin} {key}", value, getattr(cfg, key)))
    cfg.defaults = _model("config defaults", file.get("defaults"), ModelConfig(), "")
    models = file.get("models")
    if models is not None:
        if not isinstance(models, dict) or not models:
            raise ConfigError("config models: expected a non-empty mapping of model name to settings")
        cfg.models = [_model(f"config models.{n}", raw, cfg.defaults, str(n)) for n, raw in models.items()]
    check(cfg)
    return cfg


def check(cfg: ServerConfig) -> None:
    try:
        ipaddress.ip_address(cfg.host)
    except ValueError:
        raise ConfigError(f"host {cfg.host!r} is not an IP address") from None
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"port {cfg.port} must be between 1 and 65535")
    if cfg.poll_interval < 0.1:
        raise ConfigError(f"poll interval {cfg.poll_interval} must be at least 0.1 seconds")
    if cfg.api_servers < 1 or cfg.grace_period_s <= 0:
        raise ConfigError("api_servers must be at least 1 and grace_period_s positive")
    for m in [cfg.defaults, *(cfg.models or [])]:
        where = f"model {m.name!r}" if m.name else "defaults"
        try:
            VersionPolicy.parse(m.policy)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if m.artifact not in ARTIFACTS:
            raise ConfigError(f"{where}: artifact {m.artifact!r} is not one of {list(ARTIFACTS)}")
        if not (m.device in ("auto", "cpu", "cuda") or (m.device.startswith("cuda:") and m.device[5:].isdigit())):
            raise ConfigError(f"{where}: device {m.device!r} must be auto, cpu, cuda or cuda:N")
        if m.artifact == "pickle" and not m.trust_pickle:
            raise ConfigError(f"{where}: artifact 'pickle' needs trust_pickle: true")
        for key in ("max_batch_size", "workers", "max_request_bytes", "max_rows_per_request"):
            if getattr(m, key) < 1:
                raise ConfigError(f"{where}: {key} must be at least 1")
        if m.batch_timeout_s < 0 or m.inference_timeout_s <= 0 or m.threads < 0 or m.max_queued_requests < 0:
            raise ConfigError(f"{where}: timeouts, threads and max_queued_requests must not be negative")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (env MODELDOCK_CONFIG)")
    p.add_argument("--host", help="IP address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--poll-interval", type=float, dest="poll_interval", help="store poll seconds (default 2)")
    p.add_argument("--cache-dir", dest="cache_dir", help="where the server may write")


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if env is None else env
    path = args.config or env.get("MODELDOCK_CONFIG")
    file = load_yaml(path) if path else {}
    flags = {k: getattr(args, k, None) for k in ("host", "port", "poll_interval", "cache_dir")}
    # --store has a default in the parser; only an explicit value overrides file and env.
    if getattr(args, "store", None) not in (None, "models") or not (file.get("store") or env.get("MODELDOCK_STORE")):
        flags["store"] = args.store
    cfg = build(file, env, flags)
    cfg.cache_dir = cfg.cache_dir or default_cache_dir(env)
    return cfg
