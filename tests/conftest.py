"""Shared fixtures: a store with published versions of a tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
