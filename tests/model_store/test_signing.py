"""Signed versions with the real OpenSSF model-signing package and keys made here: each way a
signature can fail is a rejection with its reason; both directions of interop with its CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from model_store import ModelStore, StoreError, VersionState
from model_store.signing import SIGNATURE_NAME, PublicKey, SigningKey, TrustPolicy
from tests.conftest import make_keys, publish_tiny

CLI = [sys.executable, "-m", "model_signing"]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    (tmp_path / "keys").mkdir()
    return {n: make_keys(tmp_path / "keys", n) for n in ("a", "b")}


def trusting(store: ModelStore, *publics: Path, required: bool = True) -> ModelStore:
    """A second look at the same folder, as a server with this trust policy would take it."""
    return ModelStore(store.root, trust=TrustPolicy.from_files(publics, required))


def reason(store: ModelStore, version: int, name: str = "tiny") -> str:
    status = store.status(name, version)
    assert status.state is VersionState.REJECTED, status
    return status.reason


def test_a_signed_version_passes_and_says_by_which_key(store: ModelStore, keys: dict[str, tuple[Path, Path]]) -> None:
    v = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    assert (store.path("tiny", v) / SIGNATURE_NAME).is_file()
    checked = trusting(store, keys["a"][1])
    status = checked.status("tiny", v)
    assert status.state is VersionState.VALID and status.servable
    fp = PublicKey.load(keys["a"][1]).fingerprint[:16]
    assert f"signed by key {fp}" in status.report.notes  # type: ignore[union-attr]


def test_unsigned_and_untrusted_versions_are_rejected_with_the_reason(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    unsigned = publish_tiny(store)
    by_b = publish_tiny(store, seed=1, sign=SigningKey.load(keys["b"][0]))
    checked = trusting(store, keys["a"][1])
    assert "unsigned" in reason(checked, unsigned)
    fp_b = PublicKey.load(keys["b"][1]).fingerprint[:16]
    assert reason(checked, by_b) == f"signature: signed by an untrusted key {fp_b}"
    # Not required: an unsigned version serves, a bad signature still does not.
    lenient = trusting(store, keys["a"][1], required=False)
    assert lenient.status("tiny", unsigned).state is VersionState.VALID
    assert lenient.status("tiny", by_b).state is VersionState.REJECTED


def test_rotation_two_keys_trusted_at_once(store: ModelStore, keys: dict[str, tuple[Path, Path]]) -> None:
    old = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    new = publish_tiny(store, seed=1, sign=SigningKey.load(keys["b"][0]))
    both = trusting(store, keys["a"][1], keys["b"][1])
    assert both.versions("tiny") == [old, new]
    only_new = trusting(store, keys["b"][1])  # the old key retired: what it signed is not accepted
    assert only_new.versions("tiny") == [new]
    assert "untrusted key" in reason(only_new, old)


def test_tampering_after_signing_is_named(store: ModelStore, keys: dict[str, tuple[Path, Path]]) -> None:
    """Whoever can write the store can rewrite the manifest (here: better metrics, so that a
    `best:` policy picks the version): the checksums agree, the signature does not."""
    v = publish_tiny(store, metrics={"val_acc": 0.5}, sign=SigningKey.load(keys["a"][0]))
    folder = store.path("tiny", v)
    checked = trusting(store, keys["a"][1])
    assert checked.status("tiny", v).state is VersionState.VALID
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metrics"]["val_acc"] = 0.99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert ModelStore(store.root).status("tiny", v).state is VersionState.VALID  # sha256s cannot tell
    assert reason(checked, v) == "signature: file manifest.json changed after signing"


def test_a_changed_artifact_is_refused_before_it_is_loaded(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    v = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    folder = store.path("tiny", v)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    data = bytearray((folder / entry["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / entry["path"]).write_bytes(bytes(data))
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    why = reason(trusting(store, keys["a"][1]), v)
    assert why == f"signature: file manifest.json changed after signing; file {entry['path']} changed after signing"


def test_an_added_file_is_not_covered(store: ModelStore, keys: dict[str, tuple[Path, Path]]) -> None:
    v = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    checked = trusting(store, keys["a"][1])
    assert checked.status("tiny", v).state is VersionState.VALID
    (store.path("tiny", v) / "extra.py").write_text("import os\n")
    assert reason(checked, v) == "signature: signature does not cover file extra.py"


def test_a_signature_moved_to_another_version_is_named(store: ModelStore, keys: dict[str, tuple[Path, Path]]) -> None:
    v1 = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    v2 = publish_tiny(store, seed=1)
    shutil.copy(store.path("tiny", v1) / SIGNATURE_NAME, store.path("tiny", v2) / SIGNATURE_NAME)
    assert reason(trusting(store, keys["a"][1]), v2) == f"signature: the signature is for tiny/{v1}, not tiny/{v2}"


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"mediaType": 1}', None])
def test_damaged_signature_files_are_rejected(
    store: ModelStore, keys: dict[str, tuple[Path, Path]], content: bytes | None
) -> None:
    v = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    sig = store.path("tiny", v) / SIGNATURE_NAME
    sig.write_bytes(content if content is not None else sig.read_bytes()[: len(sig.read_bytes()) // 2])
    assert reason(trusting(store, keys["a"][1]), v).startswith("signature: model.sig is not a model signature (")


def test_a_forged_signature_with_the_trusted_hint_fails_to_verify(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    """Signed by key b but claiming key a's fingerprint: the crypto check, not the hint, decides."""
    v = publish_tiny(store, sign=SigningKey.load(keys["b"][0]))
    sig = store.path("tiny", v) / SIGNATURE_NAME
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = PublicKey.load(keys["a"][1]).fingerprint
    sig.write_text(json.dumps(bundle))
    assert "does not verify with key" in reason(trusting(store, keys["a"][1]), v)


def test_key_files_that_are_not_keys(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(StoreError, match=r"trust key .*junk.pem: not a PEM public key"):
        TrustPolicy.from_files([junk])
    with pytest.raises(StoreError, match=r"trust key .*missing.pub: cannot be read"):
        TrustPolicy.from_files([tmp_path / "missing.pub"])
    with pytest.raises(StoreError, match=r"trust key .*a\.pem: not a PEM public key .*public key\?"):
        TrustPolicy.from_files([keys["a"][0]])
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(
        rsa_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(StoreError, match="not an elliptic-curve"):
        TrustPolicy.from_files([tmp_path / "rsa.pub"])
    with pytest.raises(StoreError, match=r"signing key .*junk\.pem: not a usable PEM private key"):
        SigningKey.load(junk)
    with pytest.raises(StoreError, match="at least one trusted key"):
        TrustPolicy.from_files([])


def test_signing_in_place_refuses_a_version_that_is_not_intact(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    v = publish_tiny(store)
    store.sign("tiny", v, SigningKey.load(keys["a"][0]))
    assert trusting(store, keys["a"][1]).status("tiny", v).state is VersionState.VALID
    v2 = publish_tiny(store, seed=1)
    (store.path("tiny", v2) / "examples.npz").write_bytes(
        b"x" * (store.path("tiny", v2) / "examples.npz").stat().st_size
    )
    with pytest.raises(StoreError, match=r"not intact, not signing it: examples\.npz: sha256 mismatch"):
        store.sign("tiny", v2, SigningKey.load(keys["a"][0]))
    assert not (store.path("tiny", v2) / SIGNATURE_NAME).exists()


def test_our_signature_verifies_with_the_model_signing_cli(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    v = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    folder = store.path("tiny", v)
    verify = [*CLI, "verify", "key", str(folder), "--signature", str(folder / SIGNATURE_NAME)]
    ok = subprocess.run([*verify, "--public_key", str(keys["a"][1])], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run([*verify, "--public_key", str(keys["b"][1])], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0


def test_a_version_signed_by_the_model_signing_cli_verifies_here(
    store: ModelStore, keys: dict[str, tuple[Path, Path]]
) -> None:
    v = publish_tiny(store)
    folder = store.path("tiny", v)
    signed = subprocess.run(
        [
            *CLI,
            "sign",
            "key",
            str(folder),
            "--private_key",
            str(keys["a"][0]),
            "--signature",
            str(folder / SIGNATURE_NAME),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert signed.returncode == 0, signed.stdout + signed.stderr
    checked = trusting(store, keys["a"][1])
    assert checked.status("tiny", v).state is VersionState.VALID
    (folder / "notes.txt").write_text("added after the CLI signed")
    assert reason(checked, v) == "signature: signature does not cover file notes.txt"
