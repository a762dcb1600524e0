"""Library a training script uses: checkpoints, exports and verifiable versions in a store."""

import os

# onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux too (it resolves
# mobile.events.data.microsoft.com from a thread every few seconds) unless this is set before it
# starts. A model store and a server have no business phoning home; set it to 0 first to allow it.
# Every process the server starts inherits it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Imported on first use (PEP 562), so that `from model_store import
# StoreError` in a server process that never exports or loads a model does not import torch
# (about 150 MiB private per spawned process, docs/footprint.md).
_HOME = {
    "CheckpointManager": "checkpoint",
    "ExportMismatch": "errors",
    "ManifestError": "errors",
    "StoreError": "errors",
    "UntrustedPickle": "errors",
    "Manifest": "manifest",
    "VersionPolicy": "policy",
    "model_factory": "runtimes",
    "S3ModelStore": "s3",
    "ModelStore": "store",
    "VersionState": "store",
    "VersionStatus": "store",
    "VerifyReport": "verify",
}

if TYPE_CHECKING:
    from .checkpoint import CheckpointManager
    from .errors import ExportMismatch, ManifestError, StoreError, UntrustedPickle
    from .manifest import Manifest
    from .policy import VersionPolicy
    from .runtimes import model_factory
    from .s3 import S3ModelStore
    from .store import ModelStore, VersionState, VersionStatus
    from .verify import VerifyReport


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'model_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointManager",
    "ExportMismatch",
    "Manifest",
    "ManifestError",
    "ModelStore",
    "S3ModelStore",
    "StoreError",
    "UntrustedPickle",
    "VerifyReport",
    "VersionPolicy",
    "VersionState",
    "VersionStatus",
    "model_factory",
]
