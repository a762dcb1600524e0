"""Library a training script uses: checkpoints, exports and verifiable versions in a store."""

import os

# onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux too (it resolves
# mobile.events.data.microsoft.com from a thread every few seconds) unless this is set before it
# starts. A model store and a server have no business phoning home; set it to 0 first to allow it.
# Every process the server starts inherits it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .checkpoint import CheckpointManager
from .errors import (
    ExportMismatch,
    ManifestError,
    StoreError,
    UntrustedPickle,
)
from .manifest import Manifest
from .policy import VersionPolicy
from .runtimes import model_factory
from .s3 import S3ModelStore
from .store import ModelStore, VersionState, VersionStatus
from .verify import VerifyReport

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
