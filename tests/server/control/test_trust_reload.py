"""`trust:` follows the config file while serving: a removed key's next versions are rejected, the
version in memory keeps serving (a real store, real signatures, the config reload's own path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from model_store import ModelStore, VersionState
from model_store.policy import VersionPolicy
from model_store.signing import SigningKey, TrustPolicy
from server.config import ServerConfig, build
from server.control.config_reload import ConfigReload
from server.control.models import ModelControl
from server.control.source import StoreSource
from tests.conftest import make_keys, publish_tiny


def write_config(path: Path, keys: list[Path]) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(
        json.dumps({"models": {"tiny": {"rollout": {"mode": "off"}, "trust": {"keys": [str(k) for k in keys]}}}})
    )
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a new stamp even within one clock tick


def test_removing_a_key_while_serving_rejects_its_next_versions_not_the_serving_one(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    old_priv, old_pub = make_keys(tmp_path / "keys", "old")
    new_priv, new_pub = make_keys(tmp_path / "keys", "new")
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, sign=SigningKey.load(old_priv))  # 1: by the key about to be retired
    path = tmp_path / "config.yaml"
    write_config(path, [old_pub, new_pub])

    def reread() -> ServerConfig:
        return build(json.loads(path.read_text()), {}, {"store": str(store.root)})

    cfg = reread().model("tiny")
    store.set_trust("tiny", cfg.trust.policy())
    control = ModelControl(cfg, StoreSource(store, "tiny", VersionPolicy.parse(cfg.policy)))
    reload = ConfigReload(str(path), reread, [control])
    assert control.poll().default == 1

    write_config(path, [new_pub])  # the old key is dropped while v1 serves
    reload()
    publish_tiny(store, seed=1, sign=SigningKey.load(old_priv))  # 2: the dropped key's next version
    record = control.poll()
    assert record.default == 1 and sorted(record.verdicts) == [1], "v1 keeps serving"
    assert 1 in record.valid and 1 not in record.rejected and not record.note  # valid, not merely kept
    assert record.rejected[2].startswith("signature: signed by an untrusted key")
    assert control.cfg.trust.keys == [str(new_pub)]

    publish_tiny(store, seed=2, sign=SigningKey.load(new_priv))  # 3: by the successor
    record = control.poll()
    assert record.default == 3 and 2 in record.rejected

    # Not re-checked while serving, but a restart (a fresh store) judges every version anew.
    fresh = ModelStore(store.root)
    fresh.set_trust("tiny", reread().model("tiny").trust.policy())
    assert fresh.status("tiny", 1).state is VersionState.REJECTED
    assert fresh.status("tiny", 3).state is VersionState.VALID


def test_a_kept_verdict_does_not_survive_a_change_to_the_serving_files(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    a_priv, a_pub = make_keys(tmp_path / "keys", "a")
    _, b_pub = make_keys(tmp_path / "keys", "b")
    store = ModelStore(tmp_path / "models")
    one = publish_tiny(store, sign=SigningKey.load(a_priv))
    store.set_trust("tiny", TrustPolicy.from_files([a_pub]))
    assert store.status("tiny", one).state is VersionState.VALID
    store.set_trust("tiny", TrustPolicy.from_files([b_pub]), keep=[one])
    assert store.status("tiny", one).state is VersionState.VALID  # kept: its files are the same
    (store.path("tiny", one) / "notes.txt").write_text("added later\n")
    status = store.status("tiny", one)
    assert status.state is VersionState.REJECTED and "untrusted key" in status.reason
