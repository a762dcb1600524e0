"""Shared fixtures: a store with published versions of a tiny model."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from model_store import ModelStore
from tests.fakes import TinyMLP, example_input


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def publish_tiny(store: ModelStore, name: str = "tiny", seed: int = 0, **kw: object) -> int:
    kw.setdefault("model_factory", TinyMLP)
    kw.setdefault("factory_kwargs", {"seed": seed})
    return store.publish(name, TinyMLP(seed=seed), example_inputs=example_input(), **kw)  # type: ignore[arg-type]


@pytest.fixture
def tiny_store(store: ModelStore) -> Iterator[ModelStore]:
    """Two valid versions of `tiny` with val_acc 0.9 (v1) and 0.8 (v2)."""
    publish_tiny(store, seed=0, metrics={"val_acc": 0.9, "val_loss": 0.3})
    publish_tiny(store, seed=1, metrics={"val_acc": 0.8, "val_loss": 0.2})
    yield store


@pytest.fixture(scope="session")
def aoti_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` (TinyMLP seed 0) as exported and aoti: the AOTInductor compile (~25 s on 2 cores) is
    paid once per session; tests copy the folder."""
    store = ModelStore(tmp_path_factory.mktemp("aoti") / "models")
    version = publish_tiny(store, formats=("exported", "aoti"))
    return store.path("tiny", version)


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-256 key pair as PEM files: (private, public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@dataclass(frozen=True)
class CertChain:
    """A root CA, an intermediate and a publisher's key with its certificate, as PEM files."""

    root: Path
    intermediate: Path
    key: Path
    certificate: Path


def _pem(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def make_ca(folder: Path, name: str, signer: str = "release") -> CertChain:
    """Root `name` -> intermediate -> a leaf `CN=<signer>` certificate for code signing."""
    now = datetime.datetime.now(datetime.timezone.utc)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    names = [x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) for cn in (name, f"{name} issuing", signer)]
    paths = [folder / f"{name}-root.pem", folder / f"{name}-intermediate.pem", folder / f"{name}-{signer}.crt"]
    for i, path in enumerate(paths):
        ca = i < 2
        issuer = max(i - 1, 0)
        usage = x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = (
            x509.CertificateBuilder()
            .subject_name(names[i])
            .issuer_name(names[issuer])
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(keys[issuer], hashes.SHA256())
        )
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertChain(paths[0], paths[1], _pem(keys[2], folder / f"{name}-{signer}.key"), paths[2])
