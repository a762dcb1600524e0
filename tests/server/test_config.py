"""Configuration: YAML < environment < flags, and clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import pytest

from server.config import (
    ARTIFACTS,
    ConfigError,
    ModelConfig,
    ServerConfig,
    add_serve_arguments,
    build,
    check,
    from_args,
)

MODEL_KEYS = [
    "artifact",
    "batch_timeout_s",
    "device",
    "handler",
    "inference_timeout_s",
    "labels",
    "max_batch_size",
    "max_queued_requests",
    "max_request_bytes",
    "max_rows_per_request",
    "pin",
    "policy",
    "rollout",
    "spin_ms",
    "threads",
    "trust",
    "trust_native_code",
    "trust_pickle",
    "versions",
    "workers",
]


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modeldock serve")
    p.add_argument("--store", default="models")  # as the real CLI: a global flag with a default
    add_serve_arguments(p)
    return p


def test_layers_override_in_order(tmp_path: Path) -> None:
    file = {
        "port": 9000,
        "poll_interval": 1,
        "defaults": {"max_batch_size": 16},
        "models": {"digits": {"policy": "best:val_acc", "device": "cpu"}, "other": None},
    }
    cfg = build(file, {"MODELDOCK_PORT": "9100", "MODELDOCK_API_KEY": "k"}, {"port": 9200, "host": None})
    assert cfg.port == 9200 and cfg.poll_interval == 1.0 and cfg.api_key == "k"
    assert build(file, {"MODELDOCK_PORT": "9100"}, {}).port == 9100
    digits = cfg.model("digits")
    assert digits.policy == "best:val_acc" and digits.max_batch_size == 16
    assert cfg.model("other").policy == "latest"
    assert cfg.model("unlisted").max_batch_size == 16 and cfg.model("unlisted").name == "unlisted"
    assert digits.queue_limit() == 8 * 16
    assert [m.name for m in cfg.models or []] == ["digits", "other"]
    assert build({}, {}, {}).models is None


def test_yaml_values_are_converted_like_before() -> None:
    cfg = build(
        {"api_key": 1234, "poll_interval": 1, "defaults": {"trust_pickle": "yes", "batch_timeout_s": 0}},
        {"MODELDOCK_GRACE_PERIOD_S": "5", "MODELDOCK_Log_Level": "DEBUG"},
        {},
    )
    assert cfg.api_key == "1234" and cfg.poll_interval == 1.0 and cfg.grace_period_s == 5.0
    assert cfg.defaults.trust_pickle is True and cfg.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("file", "env", "flags", "message"),
    [
        ({"prot": 1}, {}, {}, "unknown setting(s) ['prot']; did you mean ['port']?"),
        ({"models": {"m": {"policy": "newest"}}}, {}, {}, "config models.m.policy: version policy 'newest'"),
        (
            {"models": {"m": {"artifact": "tflite"}}},
            {},
            {},
            "config models.m.artifact: must be 'auto', 'fastest', 'onnx', 'torchscript', 'exported', 'state_dict', 'pickle' or 'aoti', got 'tflite'",
        ),
        ({"models": {"m": {"device": "tpu"}}}, {}, {}, "device 'tpu' must be auto, cpu, cuda or cuda:N"),
        ({"models": {"m": {"artifact": "pickle"}}}, {}, {}, "config models.m: artifact 'pickle' needs trust_pickle"),
        ({"models": {"m": {"artifact": "aoti"}}}, {}, {}, "config models.m: artifact 'aoti' needs trust_native_code"),
        ({"models": {"m": {"max_batch_size": 0}}}, {}, {}, "models.m.max_batch_size: must be at least 1, got 0"),
        ({"models": {"m": {"max_batch_size": "many"}}}, {}, {}, "max_batch_size: expected int, got 'many'"),
        ({"models": {"m": {"max_batch_size": 2.5}}}, {}, {}, "max_batch_size: expected int, got 2.5"),
        ({"defaults": {"workers": True}}, {}, {}, "config defaults.workers: expected int, got True"),
        ({"defaults": {"trust_pickle": "maybe"}}, {}, {}, "defaults.trust_pickle: expected bool, got 'maybe'"),
        ({"defaults": {"inference_timeout_s": 0}}, {}, {}, "inference_timeout_s: must be more than 0.0, got 0"),
        ({"models": {"m": {"colour": 1}}}, {}, {}, "config models.m: unknown setting(s) ['colour']"),
        ({"models": {"m": 3}}, {}, {}, "config models.m: expected a mapping of settings, got 3"),
        ({"models": {}}, {}, {}, "expected a non-empty mapping"),
        ({}, {"MODELDOCK_PORT": "http"}, {}, "environment MODELDOCK_PORT: expected int, got 'http'"),
        ({}, {"MODELDOCK_NOPE": "1"}, {}, "unknown variable(s) ['MODELDOCK_NOPE']"),
        ({}, {"MODELDOCK_DEFAULTS": "{}"}, {}, "unknown variable(s) ['MODELDOCK_DEFAULTS']"),
        ({}, {}, {"poll_interval": 0.01}, "flag --poll-interval: must be at least 0.1, got 0.01"),
        ({}, {}, {"host": "localhost"}, "flag --host: host 'localhost' is not an IP address"),
        ({"port": 70000}, {}, {}, "config port: must be at most 65535, got 70000"),
        ({}, {"MODELDOCK_API_SERVERS": "0"}, {}, "environment MODELDOCK_API_SERVERS: must be at least 1"),
        ({"log_level": "loud"}, {}, {}, "log level 'loud' must be one of ['debug', 'info'"),
    ],
)
def test_bad_settings_are_named(file: dict, env: dict, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(file, env, flags)
    assert message in str(e.value)


def test_the_layer_holding_the_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^environment MODELDOCK_PORT: expected int"):
        build({"port": 1}, {"MODELDOCK_PORT": "x"}, {})
    with pytest.raises(ConfigError, match=r"^flag --port: expected int"):
        build({"port": 1}, {"MODELDOCK_PORT": "2"}, {"port": "x"})
    # Every problem at once, not one per restart.
    with pytest.raises(ConfigError) as e:
        build({"models": {"m": {"max_batch_size": 0, "workers": "two"}}}, {}, {})
    assert "max_batch_size: must be at least 1" in str(e.value) and "workers: expected int" in str(e.value)


@pytest.mark.parametrize(
    ("file", "env", "where", "unknown", "meant"),
    [
        ({"poll-interval": 1}, {}, "config", "poll-interval", "poll_interval"),
        ({"Port": 1}, {}, "config", "Port", "port"),
        ({"defaults": {"max-batch-size": 4}}, {}, "config defaults", "max-batch-size", "max_batch_size"),
        ({"models": {"m": {"trust-pickle": True}}}, {}, "config models.m", "trust-pickle", "trust_pickle"),
        ({"models": {"m": {"name": "x"}}}, {}, "config models.m", "name", None),
        ({}, {"MODELDOCK_POLL-INTERVAL": "1"}, "environment", "MODELDOCK_POLL-INTERVAL", "MODELDOCK_POLL_INTERVAL"),
        ({}, {"MODELDOCK_APIKEY": "k"}, "environment", "MODELDOCK_APIKEY", "MODELDOCK_API_KEY"),
    ],
)
def test_unknown_keys_in_any_spelling_list_the_known_ones(
    file: dict, env: dict, where: str, unknown: str, meant: str | None
) -> None:
    with pytest.raises(ConfigError) as e:
        build(file, env, {})
    text = str(e.value)
    assert text.startswith(f"{where}: unknown ") and f"['{unknown}']" in text
    if meant:
        assert f"did you mean ['{meant}']" in text
    if where == "environment":
        assert "'MODELDOCK_POLL_INTERVAL'" in text and "'MODELDOCK_PORT'" in text and "'MODELDOCK_CONFIG'" in text
    elif where == "config":
        assert "'poll_interval'" in text and "'port'" in text and "'models'" in text
    else:
        assert f"(known: {MODEL_KEYS})" in text


def test_a_config_file_with_a_hyphenated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 9000\npoll-interval: 1\n")
    args = serve_parser().parse_args(["--config", str(path)])
    with pytest.raises(
        ConfigError, match=r"unknown setting\(s\) \['poll-interval'\]; did you mean \['poll_interval'\]"
    ):
        from_args(args, {})


def test_any_ip_is_accepted() -> None:
    assert build({}, {}, {"host": "::1"}).host == "::1"
    assert build({}, {}, {"host": "127.0.0.2"}).host == "127.0.0.2"


def test_config_file_errors_and_cache_default(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("port: [1,\n")
    args = argparse.Namespace(config=str(bad), store="models", host=None, port=None, poll_interval=None, cache_dir=None)
    with pytest.raises(ConfigError, match="not valid YAML"):
        from_args(args, {})
    args.config = None
    cfg = from_args(args, {"XDG_CACHE_HOME": str(tmp_path)})
    assert cfg.cache_dir == str(tmp_path / "modeldock")


def test_command_line_flags(tmp_path: Path) -> None:
    p = serve_parser()
    assert "TCP port to listen on (default 8000)" in " ".join(p.format_help().split())
    (tmp_path / "c.yaml").write_text("port: 9000\nstore: from-file\n")
    env = {"MODELDOCK_CONFIG": str(tmp_path / "c.yaml"), "MODELDOCK_PORT": "9100"}
    cfg = from_args(p.parse_args(["--port", "9200", "--poll-interval", "0.5"]), env)
    assert (cfg.port, cfg.poll_interval, cfg.store) == (9200, 0.5, "from-file")  # the parser's --store default loses
    assert from_args(p.parse_args(["--store", "elsewhere"]), env).store == "elsewhere"
    assert from_args(p.parse_args([]), {}).store == "models"
    with pytest.raises(ConfigError, match=r"^flag --port: expected int, got 'eighty'"):
        from_args(p.parse_args(["--port", "eighty"]), env)


def test_configs_survive_pickling_replace_and_later_checks() -> None:
    cfg = build({"models": {"digits": {"device": "cpu", "workers": 2}}}, {}, {})
    digits = cfg.model("digits")
    # Worker processes receive their ModelConfig pickled.
    assert pickle.loads(pickle.dumps(digits)) == digits and pickle.loads(pickle.dumps(cfg)) == cfg
    assert dataclasses.replace(digits, max_batch_size=4).max_batch_size == 4
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        dataclasses.replace(digits, max_batch_size=0)  # replace checks the values too
    assert set(ARTIFACTS) == {"auto", "fastest", "onnx", "torchscript", "exported", "state_dict", "pickle", "aoti"}
    cfg.cache_dir = "/somewhere"  # callers may still set fields after build
    check(cfg)
    digits.workers = 0
    with pytest.raises(ConfigError, match=r"^models\.digits\.workers: must be at least 1, got 0"):
        check(cfg)
    assert ModelConfig().queue_limit() == 8 * 32 and ServerConfig().defaults == ModelConfig()


def test_trust_keys_merge_by_key_and_required_needs_a_key(tmp_path: Path) -> None:
    from tests.conftest import make_keys

    _, pub = make_keys(tmp_path, "k")
    cfg = build({"defaults": {"trust": {"keys": [str(pub)]}}, "models": {"m": {"trust": {"required": False}}}}, {}, {})
    m = cfg.model("m")
    assert m.trust.keys == [str(pub)] and m.trust.required is False
    policy = m.trust.policy()
    assert policy is not None and not policy.required
    default = cfg.model("other").trust.policy()
    assert default is not None and default.required  # keys given, `required` unset: required
    assert ModelConfig().trust.policy() is None  # no keys: signatures are not checked
    with pytest.raises(ConfigError, match=r"config models\.m\.trust: trust\.required: true needs at least one key"):
        build({"models": {"m": {"trust": {"required": True}}}}, {}, {})
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['key'\]; did you mean \['keys'\]"):
        build({"models": {"m": {"trust": {"key": [str(pub)]}}}}, {}, {})


@pytest.mark.parametrize(
    ("value", "size"),
    [("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("1073741824", 1 << 30), ("1.5GiB", 3 << 29)],
)
def test_memory_budget_in_bytes_with_units(value: str, size: int) -> None:
    assert build({"memory_budget": value}, {}, {}).budget_bytes() == size


def test_memory_budget_as_a_share_of_the_memory_limit_and_bad_forms_named() -> None:
    from server.resources import memory_limit

    limit = memory_limit()
    assert limit is not None and build({}, {"MODELDOCK_MEMORY_BUDGET": "50%"}, {}).budget_bytes() == limit // 2
    for bad, says in [("lots", "must be bytes"), ("0%", "percentage above 0"), ("12", "under 1 MiB")]:
        with pytest.raises(ConfigError, match=says):
            build({"memory_budget": bad}, {}, {})
    with pytest.raises(ConfigError, match="memory_budget needs pool_workers"):
        build({"memory_budget": "1GiB", "pool_workers": 0}, {}, {})


def test_with_a_budget_only_the_listed_models_not_unpinned_get_workers_of_their_own() -> None:
    file = {"memory_budget": "1GiB", "models": {"a": {}, "b": {"pin": False}}}
    cfg = build(file, {}, {})
    assert [cfg.own_workers(n) for n in ("a", "b", "c")] == [True, False, False]
    unbudgeted = build({"models": {"a": {}, "b": {"pin": False}}}, {}, {})
    assert unbudgeted.own_workers("b") and unbudgeted.budget_bytes() == 0
