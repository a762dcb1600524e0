"""Typed settings: YAML file < MODELDOCK_* environment < command-line flags, checked at start.

A setting is one typed field with its docstring: its YAML key, its MODELDOCK_<NAME> variable (server
settings) and its type and bounds checks all follow from that line. pydantic checks the values;
`build` does the layering so that an error can say which layer held the bad value. (pydantic-settings
was not used: it reads only `os.environ`, ignores unknown MODELDOCK_* variables even with
extra="forbid", and validates the merged layers, which loses where a bad value came from.)
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from model_store.policy import VersionPolicy

from .control.version_set import VersionSet
from .resources import parse_budget
from .rollout_settings import RolloutConfig as RolloutConfig  # re-exported: part of the settings
from .settings_base import _CHECKED, _T, _Checked, _fields
from .settings_base import ConfigError as ConfigError
from .trust_settings import TrustConfig as TrustConfig  # re-exported: part of the settings

Artifact = Literal["auto", "fastest", "onnx", "torchscript", "exported", "state_dict", "pickle", "aoti"]
ARTIFACTS: tuple[str, ...] = get_args(Artifact)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MiB = 1 << 20
_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ENV_PREFIX = "MODELDOCK_"
# Unknown keys are errors; a YAML number where text is expected (`api_key: 1234`) is taken as text.


@dataclass(config=_CHECKED)
class ModelConfig(_Checked):
    """How one model is served: `defaults` and `models.<name>` in the YAML file."""

    name: str = ""
    """The model's name in the store; set from its key under `models`, never written as a setting."""
    policy: str = "latest"
    """Which version answers requests that name none: `latest`, `best:<metric>[:min]` or `pinned:<n>`."""
    versions: str = ""
    """Which versions are loaded, each on its own URL: '' (only the policy's), `latest:<n>`, `all`,
    `specific:<v>[,<v>...]`. The policy's version is always loaded too."""
    labels: dict[str, int] = Field(default_factory=dict)
    """Names for loaded versions (`stable: 3`), served at /v2/models/<m>/labels/<label>/infer."""
    handler: str = ""
    """The user's pre- and post-processing, `package.module:Class` (docs/handlers.md); '' for none."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """How a new version becomes the default; keys given under a model override `defaults`."""
    trust: TrustConfig = Field(default_factory=TrustConfig)
    """Signed versions: `keys` (PEM public keys) and `required`; keys given under a model override
    `defaults` one by one. A change takes effect after a restart."""
    artifact: Artifact = "auto"
    """`auto` (aoti where it can run, then ONNX on CPU), `fastest` (each loadable artifact timed at
    warm-up, the fastest kept), or one format: `onnx`, `torchscript`, `exported`, `state_dict`, `pickle`, `aoti`."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`."""
    max_batch_size: int = Field(default=32, ge=1)
    """Rows per batch; a larger request runs alone, in chunks of this size."""
    batch_timeout_s: float = Field(default=0.0, ge=0)
    """Extra wait for a fuller batch. 0: dispatch at once, batching whatever queued meanwhile."""
    workers: int = Field(default=1, ge=1)
    """Worker processes for this model, each with its own copy of it."""
    spin_ms: float = Field(default=2.0, ge=0, le=100)
    """At light load, how long a model's only worker keeps polling for the next request after
    one, instead of sleeping: a request that comes meanwhile skips a process wake-up. Costs up to
    this much CPU per request while requests come one at a time; 0: always sleep."""
    threads: int = Field(default=0, ge=0)
    """Intra-op threads per worker; 0 picks cores / (workers + API servers)."""
    trust_pickle: bool = False
    """Allow pickled artifacts, which run code when loaded: only for a store you control."""
    trust_native_code: bool = False
    """Allow `aoti` artifacts (AOTInductor packages): native code the worker loads and runs, so
    whoever can write the store runs code in the server. Only for a store you control."""
    inference_timeout_s: float = Field(default=30.0, gt=0)
    """A predict running longer answers 504 and its worker is recycled."""
    max_queued_requests: int = Field(default=0, ge=0)
    """Requests waiting or running per model before 503; 0 means 8 x max_batch_size x workers."""
    max_request_bytes: int = Field(default=64 * MiB, ge=1)
    """Largest request body in bytes; larger ones get 413."""
    max_rows_per_request: int = Field(default=65536, ge=1)
    """Most rows (batch entries) in one request; more get 413."""
    pin: bool | None = None
    """With `memory_budget`: true keeps the model loaded (never evicted); false serves a model of
    `models:` from the pool, loaded on demand. Unset: the models of `models:` are pinned."""

    @field_validator("policy")
    @classmethod
    def _policy_parses(cls, value: str) -> str:
        VersionPolicy.parse(value)  # its ValueError names the policy and the allowed forms
        return value

    @field_validator("versions")
    @classmethod
    def _versions_parse(cls, value: str) -> str:
        VersionSet.parse(value)  # its ValueError names the allowed forms
        return value

    @field_validator("labels")
    @classmethod
    def _labels_are_names(cls, value: dict[str, int]) -> dict[str, int]:
        for label, version in value.items():
            if not _LABEL.match(label):
                raise ValueError(f"label {label!r} must be letters, digits, '_', '-' or '.'")
            if version < 1:
                raise ValueError(f"label {label!r} must name a version number (1 or more), got {version}")
        return value

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        if not (value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())):
            raise ValueError(f"device {value!r} must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _pickle_is_trusted(self) -> ModelConfig:
        if self.artifact == "pickle" and not self.trust_pickle:
            raise ValueError("artifact 'pickle' needs trust_pickle: true")
        if self.artifact == "aoti" and not self.trust_native_code:
            raise ValueError("artifact 'aoti' needs trust_native_code: true (an AOTInductor package is native code)")
        return self

    def queue_limit(self) -> int:
        return self.max_queued_requests or 8 * self.max_batch_size * self.workers


@dataclass(config=_CHECKED)
class ServerConfig(_Checked):
    """The whole server. Every setting but `models` and `defaults` is also MODELDOCK_<NAME>."""

    store: str = "models"
    """Model store: a folder, or an s3:// URL."""
    host: str = "127.0.0.1"
    """IP address to listen on; 0.0.0.0 or :: for every interface."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the gRPC service (docs/grpc.md); 0 turns gRPC off."""
    poll_interval: float = Field(default=2.0, ge=0.1)
    """Seconds between polls of the store for new versions."""
    cache_dir: str = ""
    """The one folder the server writes to; empty: $XDG_CACHE_HOME/modeldock or ~/.cache/modeldock."""
    api_key: str = ""
    """When set, required on every route but /v2/health/* and /metrics."""
    api_servers: int = Field(default=1, ge=1)
    """HTTP server processes."""
    decisions_path: str = ""
    """Where rollout decisions are kept across restarts; empty: <cache_dir>/decisions.json. Point
    every replica at one shared writable file to share them (docs/rollout.md)."""
    admin_api_key: str = ""
    """Key for the admin routes (/v2/admin/...); they are off without one. Never the api_key."""
    # ---- telemetry (server/telemetry) ----
    tracing: bool = False
    """OpenTelemetry: a span per request, exported as the OTEL_* variables say (docs/observability.md)."""
    payload_log: str = ""
    """Log a sample of requests as JSON lines: '' (off), `stdout`, or a file path (rotated)."""
    payload_log_sample: float = Field(default=1.0, gt=0, le=1)
    """Share of requests the payload log records."""
    payload_log_responses: bool = True
    """Record the outputs too; false: the requests only."""
    payload_log_tensors: Literal["sha256", "inline"] = "sha256"
    """Tensor contents as the sha256 of their bytes (with datatype and shape), or `inline` values."""
    payload_log_max_mb: int = Field(default=256, ge=1)
    """Disk cap of a payload log file with its rotated copies, in MiB."""
    grace_period_s: float = Field(default=25.0, gt=0)
    """On SIGTERM, how long accepted requests may take to finish before the server exits."""
    log_level: str = "info"
    """One of debug, info, warning, error, critical."""
    models: list[ModelConfig] | None = None
    """Models to serve; None serves every model in the store (also those that appear later)."""
    allow_models: str = ""
    """A glob of names served when they appear while serving, besides `models`; '' means every
    model when `models` is not set, none otherwise (docs/model-control.md)."""
    pool_workers: int = Field(default=1, ge=0)
    """Worker processes hosting the models added while serving; 0: none are added."""
    memory_budget: str = ""
    """Memory for the pool's models (docs/model-control.md): bytes (`2GiB`, `512MB`) or a share of
    the memory limit (`60%`). Set, the pool loads a model on its first request and unloads the
    least recently used idle one when a load would pass it; '' loads every model and keeps it."""
    load_timeout_s: float = Field(default=10.0, gt=0)
    """With `memory_budget`: how long a request waits for its model to load before 503 + Retry-After."""
    defaults: ModelConfig = Field(default_factory=ModelConfig)
    """Settings for every model that `models.<name>` does not override."""

    @field_validator("host")
    @classmethod
    def _host_is_ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"host {value!r} is not an IP address") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_exists(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"log level {value!r} must be one of {list(LOG_LEVELS)}")
        return value

    @field_validator("memory_budget")
    @classmethod
    def _budget_parses(cls, value: str) -> str:
        if value:
            parse_budget(value)  # its ValueError names the forms
        return value

    @model_validator(mode="after")
    def _admin_key_is_its_own(self) -> ServerConfig:
        if self.admin_api_key and self.admin_api_key == self.api_key:
            raise ValueError("admin_api_key must differ from api_key: an inference client must not get admin rights")
        if self.memory_budget and not self.pool_workers:
            raise ValueError("memory_budget needs pool_workers (the pool holds the models loaded on demand)")
        return self

    def budget_bytes(self) -> int:
        """The pool's memory budget in bytes; 0 when off."""
        return parse_budget(self.memory_budget) if self.memory_budget else 0

    def own_workers(self, name: str) -> bool:
        """A model of the start-up set gets workers of its own (never evicted); with a budget
        only those of `models:` without `pin: false` do, the others go to the pool."""
        if not self.memory_budget:
            return True
        return any(m.name == name and m.pin is not False for m in self.models or [])

    def model(self, name: str) -> ModelConfig:
        for m in self.models or []:
            if m.name == name:
                return m
        return dataclasses.replace(self.defaults, name=name)


_MODEL_KEYS = sorted(set(_fields(ModelConfig)) - {"name"})
_SECTIONS = ("models", "defaults")  # only in the YAML file: they nest
_SERVER_KEYS = sorted(_fields(ServerConfig))
_SCALAR_KEYS = [k for k in _SERVER_KEYS if k not in _SECTIONS]
_ENV_KNOWN = sorted([f"{ENV_PREFIX}CONFIG"] + [ENV_PREFIX + k.upper() for k in _SCALAR_KEYS])


def default_cache_dir(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "modeldock")


def _unknown(where: str, keys: list[str], known: list[str], what: str = "setting") -> ConfigError:
    """Name the unknown keys, the likely intended ones, and every known one."""
    import difflib  # only on this error path

    lowered = {k.lower(): k for k in known}
    guesses = {lowered[g] for k in keys for g in difflib.get_close_matches(k.replace("-", "_").lower(), lowered, n=1)}
    hint = f"; did you mean {sorted(guesses)}?" if guesses else ""
    return ConfigError(f"{where}: unknown {what}(s) {keys}{hint} (known: {known})")


def _check_keys(where: str, raw: Mapping[Any, Any], known: list[str]) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise _unknown(where, unknown, known)


_WORDING = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be {expected}",
}


def _validated(make: Callable[[], _T], cls: type, where: Callable[[str], str]) -> _T:
    """Run `make`, turning pydantic's errors into one ConfigError naming each setting (where(field))."""
    try:
        return make()
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            ctx = err.get("ctx", {})
            if err["type"] == "value_error":  # our checks: the message already names the value
                problems.append(f"{where(key)}: {ctx['error']}")
                continue
            if err["type"].endswith(("_type", "_parsing")) or err["type"] == "int_from_float":
                kind = _fields(cls)[key].annotation if key in _fields(cls) else None
                detail = f"expected {getattr(kind, '__name__', kind)}"
            elif err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                detail = "unknown setting"
            elif err["type"] in _WORDING:
                detail = _WORDING[err["type"]].format(**ctx)
            else:
                detail = err["msg"]
            problems.append(f"{where(key)}: {detail}, got {err['input']!r}")
        raise ConfigError("; ".join(problems)) from None


def _under(where: str) -> Callable[[str], str]:
    return lambda key: f"{where}.{key}" if key else where


def _model(where: str, raw: Any, base: ModelConfig, name: str) -> ModelConfig:
    """One `defaults` or `models.<name>` section laid over `base`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    _check_keys(where, raw, _MODEL_KEYS)
    for section, kind in (("rollout", RolloutConfig), ("trust", TrustConfig)):
        if isinstance(raw.get(section), dict):  # a model's keys override the defaults' one by one
            _check_keys(f"{where}.{section}", raw[section], sorted(_fields(kind)))
            raw = {**raw, section: {**dataclasses.asdict(getattr(base, section)), **raw[section]}}
    return _validated(lambda: dataclasses.replace(base, name=name, **raw), ModelConfig, _under(where))


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
    _check_keys("config", file, _SERVER_KEYS)
    named = {k: k[len(ENV_PREFIX) :] for k in env if k.startswith(ENV_PREFIX) and k != f"{ENV_PREFIX}CONFIG"}
    unknown_env = sorted(var for var, key in named.items() if key.lower() not in _SCALAR_KEYS)
    if unknown_env:
        raise _unknown("environment", unknown_env, _ENV_KNOWN, "variable")
    flags = {k: v for k, v in flags.items() if v is not None and k != "config"}
    _check_keys("flags", flags, _SCALAR_KEYS)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # where each value came from, for the error message
    for key, value in file.items():
        if key not in _SECTIONS:
            values[key], origin[key] = value, f"config {key}"
    for var, key in named.items():
        values[key.lower()], origin[key.lower()] = env[var], f"environment {var}"
    for key, value in flags.items():
        values[key], origin[key] = value, f"flag --{key.replace('_', '-')}"
    defaults = _model("config defaults", file.get("defaults"), ModelConfig(), "")
    models = file.get("models")
    if models is not None:
        if not isinstance(models, dict) or not models:
            raise ConfigError("config models: expected a non-empty mapping of model name to settings")
        values["models"] = [_model(f"config models.{n}", raw, defaults, str(n)) for n, raw in models.items()]
    return _validated(
        lambda: ServerConfig(**values, defaults=defaults), ServerConfig, lambda k: origin.get(k, k) or "config"
    )


def check(cfg: ServerConfig) -> None:
    """Check a config again, e.g. after a caller changed its fields (build already checked it)."""
    for m in [cfg.defaults, *(cfg.models or [])]:
        _validated(partial(dataclasses.replace, m), ModelConfig, _under(f"models.{m.name}" if m.name else "defaults"))
    _validated(partial(dataclasses.replace, cfg), ServerConfig, lambda k: k or "config")


_FLAGS = ("host", "port", "grpc_port", "poll_interval", "cache_dir")  # the rest: file or environment


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"YAML config file (env {ENV_PREFIX}CONFIG)")
    for key in _FLAGS:
        field = _fields(ServerConfig)[key]
        default = f" (default {field.default})" if field.default not in ("", None) else ""
        text = f"{(field.description or '').rstrip('.')}{default}".replace("%", "%%")
        # No argparse type: build() converts and checks, naming the flag in its error.
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, help=text)


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if env is None else env
    path = args.config or env.get(f"{ENV_PREFIX}CONFIG")
    file = load_yaml(path) if path else {}
    flags = {k: getattr(args, k, None) for k in _FLAGS}
    # --store has a default in the parser; only an explicit value overrides file and env.
    if getattr(args, "store", None) not in (None, "models") or not (file.get("store") or env.get(f"{ENV_PREFIX}STORE")):
        flags["store"] = getattr(args, "store", None)
    cfg = build(file, env, flags)
    cfg.cache_dir = cfg.cache_dir or default_cache_dir(env)
    return cfg
