"""Certificate signatures: a key with its certificate and chain signs, a server trusting the root CA
accepts it and names the signer; another CA, a key-only policy and a certificate that is not the
key's are refused with the reason; both directions with `model_signing ... certificate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model_store import ModelStore, StoreError, VersionState
from model_store.signing import SIGNATURE_NAME, SigningKey, TrustPolicy
from tests.conftest import CertChain, make_ca, make_keys, publish_tiny

CLI = [sys.executable, "-m", "model_signing"]


@pytest.fixture
def acme(tmp_path: Path) -> CertChain:
    (tmp_path / "pki").mkdir()
    return make_ca(tmp_path / "pki", "acme", signer="training-ci")


def signed_by(chain: CertChain) -> SigningKey:
    return SigningKey.load(chain.key, certificate=chain.certificate, chain=[chain.intermediate])


def status_under(store: ModelStore, version: int, policy: TrustPolicy) -> tuple[VersionState, str, list[str]]:
    checked = ModelStore(store.root, trust=policy)
    status = checked.status("tiny", version)
    return status.state, status.reason, status.report.notes if status.report else []


def test_a_certificate_signature_chains_to_the_trusted_root(store: ModelStore, acme: CertChain) -> None:
    key = signed_by(acme)
    assert key.signer_name == "certificate CN=training-ci"
    v = publish_tiny(store, sign=key)
    state, _, notes = status_under(store, v, TrustPolicy.from_files([], roots=[acme.root]))
    assert state is VersionState.VALID
    assert "signed by certificate CN=training-ci" in notes

    # The certificate still binds the files: an added file is named as with a key signature.
    (store.path("tiny", v) / "extra.txt").write_text("x")
    state, why, _ = status_under(store, v, TrustPolicy.from_files([], roots=[acme.root]))
    assert (state, why) == (VersionState.REJECTED, "signature: signature does not cover file extra.txt")


def test_another_ca_or_a_key_only_policy_refuses_it_with_the_reason(
    tmp_path: Path, store: ModelStore, acme: CertChain
) -> None:
    other = make_ca(tmp_path / "pki", "other")
    _, pub = make_keys(tmp_path / "pki", "k")
    v = publish_tiny(store, sign=signed_by(acme))
    state, why, _ = status_under(store, v, TrustPolicy.from_files([], roots=[other.root]))
    assert state is VersionState.REJECTED
    assert why.startswith("signature: certificate CN=training-ci is not trusted (")
    state, why, _ = status_under(store, v, TrustPolicy.from_files([pub]))
    assert why == "signature: signed by certificate CN=training-ci, but this model trusts keys only (no trust.roots)"
    # Without its intermediate the leaf cannot be chained to the root.
    bare = publish_tiny(store, seed=1, sign=SigningKey.load(acme.key, certificate=acme.certificate))
    state, why, _ = status_under(store, bare, TrustPolicy.from_files([], roots=[acme.root]))
    assert state is VersionState.REJECTED and "is not trusted" in why


def test_certificate_files_are_checked_before_anything_is_signed(tmp_path: Path, acme: CertChain) -> None:
    stranger, _ = make_keys(tmp_path / "pki", "stranger")
    with pytest.raises(StoreError, match="is not the certificate of this private key"):
        SigningKey.load(stranger, certificate=acme.certificate)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(StoreError, match=f"certificate chain {junk}: not a PEM certificate"):
        SigningKey.load(acme.key, certificate=acme.certificate, chain=[junk])
    with pytest.raises(StoreError, match=f"trust root {junk}: not a PEM certificate"):
        TrustPolicy.from_files([], roots=[junk])
    with pytest.raises(StoreError, match="needs the signing certificate"):
        SigningKey.load(acme.key, chain=[acme.intermediate])


def test_certificate_signatures_interoperate_with_the_model_signing_cli(store: ModelStore, acme: CertChain) -> None:
    ours = store.path("tiny", publish_tiny(store, sign=signed_by(acme)))
    checked = subprocess.run(
        [*CLI, "verify", "certificate", str(ours), "--signature", str(ours / SIGNATURE_NAME),
         "--certificate_chain", str(acme.root)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    theirs = store.path("tiny", publish_tiny(store, seed=1))
    signed = subprocess.run(
        [*CLI, "sign", "certificate", str(theirs), "--signature", str(theirs / SIGNATURE_NAME),
         "--private_key", str(acme.key), "--signing_certificate", str(acme.certificate),
         "--certificate_chain", str(acme.intermediate)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stdout + signed.stderr
    state, _, notes = status_under(store, int(theirs.name), TrustPolicy.from_files([], roots=[acme.root]))
    assert state is VersionState.VALID and "signed by certificate CN=training-ci" in notes


def test_a_damaged_certificate_in_the_signature_is_a_rejection(store: ModelStore, acme: CertChain) -> None:
    import base64
    import json

    v = publish_tiny(store, sign=signed_by(acme))
    sig = store.path("tiny", v) / SIGNATURE_NAME
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"] = base64.b64encode(
        b"not DER"
    ).decode()
    sig.write_text(json.dumps(bundle))
    state, why, _ = status_under(store, v, TrustPolicy.from_files([], roots=[acme.root]))
    assert state is VersionState.REJECTED and why.startswith("signature: model.sig is not a model signature")
