"""A real server that requires signatures: signed versions serve; unsigned, untrusted, tampered
and damaged ones are rejected with their reason (metadata, metrics, `modeldock ls`) while the
serving version keeps answering under load; a key file that is not a key stops the start (2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from model_store import ModelStore
from model_store.signing import SIGNATURE_NAME, PublicKey, SigningKey
from tests.conftest import make_keys, publish_tiny
from tests.server.conftest import Load, ServerProcess, infer_body, serve_refused
from tests.server.test_hot_reload import wait_for

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[0.1, 0.2, 0.3, 0.4]]


def rejected(server: ServerProcess) -> dict[str, str]:
    return dict(server.get("/v2/models/tiny").json()["properties"]["rejected"])


def test_only_versions_signed_by_a_trusted_key_serve(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "keys").mkdir()
    a_priv, a_pub = make_keys(tmp_path / "keys", "a")
    b_priv, b_pub = make_keys(tmp_path / "keys", "b")
    mallory, _ = make_keys(tmp_path / "keys", "mallory")
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, sign=SigningKey.load(a_priv))  # 1
    config = {"poll_interval": 0.3, "defaults": {"trust": {"keys": [str(a_pub), str(b_pub)]}}}
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=3)
    try:
        wait_for(lambda: load.versions_since(0) == {"1"}, "v1 answers")
        publish_tiny(store, seed=1)  # 2: unsigned
        publish_tiny(store, seed=2, sign=SigningKey.load(mallory))  # 3: a key nobody trusts
        four = publish_tiny(store, seed=3, sign=SigningKey.load(a_priv))  # 4: then rewritten
        manifest = json.loads((store.path("tiny", four) / "manifest.json").read_text())
        manifest["metrics"] = {"val_acc": 0.99}
        (store.path("tiny", four) / "manifest.json").write_text(json.dumps(manifest))
        five = publish_tiny(store, seed=4, sign=SigningKey.load(a_priv))  # 5: a file added
        (store.path("tiny", five) / "run.py").write_text("print('hello')\n")
        six = publish_tiny(store, seed=5)  # 6: another version's signature copied in
        shutil.copy(store.path("tiny", 1) / SIGNATURE_NAME, store.path("tiny", six) / SIGNATURE_NAME)
        seven = publish_tiny(store, seed=6, sign=SigningKey.load(a_priv))  # 7: a truncated signature
        sig = store.path("tiny", seven) / SIGNATURE_NAME
        sig.write_bytes(sig.read_bytes()[:40])
        wait_for(lambda: set(rejected(server)) >= {"2", "3", "4", "5", "6", "7"}, "2..7 rejected", timeout=60)
        why = rejected(server)
        assert "unsigned" in why["2"]
        assert why["3"] == f"signature: signed by an untrusted key {PublicKey.load(_pub(mallory)).fingerprint[:16]}"
        assert why["4"] == "signature: file manifest.json changed after signing"
        assert why["5"] == "signature: signature does not cover file run.py"
        assert why["6"] == "signature: the signature is for tiny/1, not tiny/6"
        assert why["7"].startswith("signature: model.sig is not a model signature")
        assert server.metric("modeldock_model_reloads_total", model="tiny", result="rejected") >= 6
        mark = load.count()
        wait_for(lambda: load.count() > mark + 20, "load goes on")
        assert load.versions_since(0) == {"1"}, "no rejected version ever answered"

        # The second key of the rotation: its version lands and serves.
        publish_tiny(store, seed=7, sign=SigningKey.load(b_priv))  # 8
        mark = load.count()
        wait_for(lambda: "8" in load.versions_since(mark), "v8 (key b) answers", timeout=30)
    finally:
        load.stop()
    assert not load.errors and {code for code, _ in load.results} == {200}

    ls = subprocess.run(
        [sys.executable, "-m", "server", "ls", "--store", str(store.root), "--trust-key", str(a_pub)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert ls.returncode == 0, ls.stderr
    lines = {line.split()[1]: line for line in ls.stdout.splitlines()[1:]}
    assert "verified" in lines["1"] and "signed by key" in lines["1"]
    assert "REJECTED" in lines["8"] and "untrusted key" in lines["8"]  # b is not trusted by this listing


def _pub(private: Path) -> Path:
    return private.with_suffix(".pub")


def test_a_trust_key_that_is_not_a_key_stops_the_start(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    junk = tmp_path / "junk.pub"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    for trust, message in (
        ({"keys": [str(junk)]}, f"trust key {junk}: not a PEM public key"),
        ({"keys": [str(tmp_path / "gone.pub")]}, f"trust key {tmp_path / 'gone.pub'}: cannot be read"),
        ({"roots": [str(junk)]}, f"trust root {junk}: not a PEM certificate"),
    ):
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({"models": {"tiny": {"trust": trust}}}))
        out = serve_refused(store.root, cfg, tmp_path)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr and "models.tiny.trust" in out.stderr
