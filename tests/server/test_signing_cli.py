"""`modeldock sign` with a key or a certificate chain, and `modeldock verify` as a server trusting
a key or a root CA would: the lines an operator reads, and the exit codes scripts test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model_store import ModelStore
from tests.conftest import make_ca, make_keys, publish_tiny

ROOT = Path(__file__).resolve().parents[2]


def modeldock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_sign_in_place_with_a_key_or_a_certificate_then_verify(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    acme = make_ca(tmp_path / "pki", "acme", signer="release")
    priv, pub = make_keys(tmp_path / "pki", "k")
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    publish_tiny(store, seed=1)
    at = ("--store", str(store.root))

    out = modeldock("sign", "tiny:1", *at, "--key", str(acme.key), "--cert", str(acme.certificate),
                    "--chain", str(acme.intermediate))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"signed tiny:1 in {store.root} by certificate CN=release (model.sig)"
    out = modeldock("sign", "tiny:2", *at, "--key", str(priv))
    assert out.returncode == 0 and " by key " in out.stdout, out.stderr

    out = modeldock("verify", "tiny:1", *at, "--trust-root", str(acme.root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tiny:1 ok" in out.stdout and "signed by certificate CN=release" in out.stdout
    out = modeldock("verify", "tiny", *at, "--trust-root", str(acme.root), "--trust-key", str(pub))
    assert out.returncode == 0 and "tiny:2 ok" in out.stdout, out.stdout
    out = modeldock("verify", "tiny:2", *at, "--trust-root", str(acme.root))
    assert out.returncode == 1 and "signed by an untrusted key" in out.stdout

    stranger, _ = make_keys(tmp_path / "pki", "stranger")
    out = modeldock("sign", "tiny:2", *at, "--key", str(stranger), "--cert", str(acme.certificate))
    assert out.returncode == 1 and "is not the certificate of this private key" in out.stderr
