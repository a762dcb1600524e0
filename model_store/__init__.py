"""Library a training script uses: checkpoints, exports and verifiable versions in a store."""

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
