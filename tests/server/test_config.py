"""Configuration: YAML < environment < flags, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server.config import ConfigError, build, from_args


def test_layers_override_in_order(tmp_path: Path) -> None:
    file = {
        "port": 9000,
        "poll_interval": 1,
        "defaults": {"max_batch_size": 16},
        "models": {"digits": {"policy": "best:val_acc", "device": "cpu"}, "other": None},
    }
    cfg = build(file, {"MODELDOCK_PORT": "9100", "MODELDOCK_API_KEY": "k"}, {"port": 9200, "host": None})
    assert cfg.port == 9200 and cfg.poll_interval == 1.0 and cfg.api_key == "k"
    digits = cfg.model("digits")
    assert digits.policy == "best:val_acc" and digits.max_batch_size == 16
    assert cfg.model("other").policy == "latest"
    assert cfg.model("unlisted").max_batch_size == 16
    assert digits.queue_limit() == 8 * 16


@pytest.mark.parametrize(
    ("file", "env", "flags", "message"),
    [
        ({"prot": 1}, {}, {}, "unknown setting(s) ['prot']"),
        ({"models": {"m": {"policy": "newest"}}}, {}, {}, "version policy 'newest'"),
        ({"models": {"m": {"artifact": "tflite"}}}, {}, {}, "artifact 'tflite'"),
        ({"models": {"m": {"device": "tpu"}}}, {}, {}, "device 'tpu'"),
        ({"models": {"m": {"artifact": "pickle"}}}, {}, {}, "needs trust_pickle"),
        ({"models": {"m": {"max_batch_size": 0}}}, {}, {}, "max_batch_size must be at least 1"),
        ({"models": {"m": {"max_batch_size": "many"}}}, {}, {}, "expected int"),
        ({"models": {"m": {"colour": 1}}}, {}, {}, "unknown setting 'colour'"),
        ({}, {"MODELDOCK_PORT": "http"}, {}, "expected int"),
        ({}, {"MODELDOCK_NOPE": "1"}, {}, "MODELDOCK_NOPE"),
        ({}, {}, {"poll_interval": 0.01}, "at least 0.1"),
        ({}, {}, {"host": "localhost"}, "not an IP address"),
    ],
)
def test_bad_settings_are_named(file: dict, env: dict, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(file, env, flags)
    assert message in str(e.value)


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
