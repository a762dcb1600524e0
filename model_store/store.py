"""ModelStore: the on-disk layout `<root>/<model>/<version>/`, listing, publishing, resolving.

A version is *pending* while its manifest is missing or unparsable or a listed file is missing
or of the wrong size (a copy in progress); *rejected* when complete but failing a check (the
reason is kept until the manifest or a listed file changes); otherwise *valid*.

A root that is a URL (`s3://bucket/prefix`) makes the store class registered for its scheme
(`model_store.s3` registers `s3`: it mirrors the bucket into a local folder and applies these
same rules to the mirror). This module imports no store module: they import it and register.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import publish as _publish
from .errors import NewerManifest, StoreError
from .manifest import MANIFEST_NAME, Manifest
from .policy import VersionPolicy
from .prebuilt import plan_prebuilt
from .signing import SIGNATURE_NAME, SigningKey, TrustPolicy, sign_folder
from .verify import HashCache, VerifyReport, check_files, verify_version

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
STAGING_PREFIX = ".staging-"


class VersionState(enum.Enum):
    PENDING = "pending"
    REJECTED = "rejected"
    VALID = "valid"


@dataclass(frozen=True)
class VersionStatus:
    """What a look at one version folder found."""

    name: str
    version: int
    state: VersionState
    reason: str = ""
    manifest: Manifest | None = None
    report: VerifyReport | None = None

    @property
    def servable(self) -> list[str]:
        """Formats a server may load (verified, and rebuildable without trusting pickles)."""
        return self.report.servable if self.report and self.state is VersionState.VALID else []


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise StoreError(
            f"model name {name!r} must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_version(version: int | str) -> int:
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise StoreError(f"version {version!r} is not a positive integer")
    return int(text)


_SCHEMES: dict[str, type[ModelStore]] = {}  # URL scheme -> the store class for such roots


def register_scheme(scheme: str, store_class: type[ModelStore]) -> None:
    """Make `ModelStore("<scheme>://…")` build `store_class` (a store module calls this on import)."""
    _SCHEMES[scheme.lower()] = store_class


class ModelStore:
    """A folder of models and their numbered versions; the unit a training script publishes to.

    A root of the form `s3://bucket/prefix` makes an `S3ModelStore` (see `model_store.s3`);
    `cache_dir` says where it keeps its mirror and is not used by a folder store.
    """

    def __new__(cls, root: str | os.PathLike[str] = "models", **kwargs: Any) -> ModelStore:
        url = _URL.match(root) if cls is ModelStore and isinstance(root, str) else None
        if url is None:
            return super().__new__(cls)
        scheme = url["scheme"].lower()
        if scheme not in _SCHEMES:
            known = ", ".join(f"{s}://" for s in sorted(_SCHEMES)) or "none"
            raise StoreError(f"store {root!r}: no store handles {scheme}:// URLs (known: {known})")
        return super().__new__(_SCHEMES[scheme])

    def __init__(
        self,
        root: str | os.PathLike[str] = "models",
        *,
        trust_pickle: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        trust: TrustPolicy | None = None,
    ):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} is a file, not a folder")
        self.trust_pickle = trust_pickle
        # Whose signatures a version needs (model_store.signing); None: signatures are not checked.
        self.trust = trust
        self._trust: dict[str, TrustPolicy | None] = {}  # per model, over `trust`
        self.hashes = HashCache()
        self._lock = threading.Lock()
        # (name, version) -> (files' fingerprint, trust identity, status), complete versions only.
        self._looked: dict[tuple[str, int], tuple[tuple[Any, ...], Any, VersionStatus]] = {}

    def __repr__(self) -> str:
        return f"ModelStore({self.location!r})"

    @property
    def location(self) -> str:
        """Where the store lives, for messages: its folder, or its `s3://` URL."""
        return str(self.root)

    # ---- listing -------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the model folders in the store, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def version_folders(self, name: str) -> list[int]:
        """Every numeric version folder of a model, whatever its state."""
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def statuses(self, name: str) -> list[VersionStatus]:
        return [self.status(name, v) for v in self.version_folders(name)]

    def versions(self, name: str) -> list[int]:
        """Ascending list of the model's complete, valid versions."""
        return [s.version for s in self.statuses(name) if s.state is VersionState.VALID]

    def path(self, name: str, version: int | str) -> Path:
        return self.root / check_name(name) / str(check_version(version))

    def manifest(self, name: str, version: int | str) -> dict[str, Any]:
        return Manifest.load(self._existing(name, version)).to_dict()

    def _existing(self, name: str, version: int | str) -> Path:
        folder = self.path(name, version)
        if not folder.is_dir():
            raise StoreError(f"{name}:{version} does not exist in {self.root}")
        return folder

    # ---- trust ---------------------------------------------------------------------------
    def set_trust(self, name: str, policy: TrustPolicy | None, keep: Iterable[int] = ()) -> None:
        """The signatures one model's versions need (over the store's `trust`). Versions in
        `keep` (the ones serving) keep a valid verdict they earned under the previous keys while
        their files stay as they are: a key removed while serving refuses the next versions it
        signed, not the version in memory (docs/security.md, "Rotation")."""
        name = check_name(name)
        identity = policy.identity if policy is not None else None
        with self._lock:
            self._trust[name] = policy
            for version in keep:
                cached = self._looked.get((name, version))
                if cached is not None and cached[2].state is VersionState.VALID:
                    self._looked[(name, version)] = (cached[0], identity, cached[2])

    def trust_for(self, name: str) -> TrustPolicy | None:
        return self._trust.get(name, self.trust)

    # ---- state of one version ------------------------------------------------------------
    def status(self, name: str, version: int) -> VersionStatus:
        """Pending, rejected or valid; complete versions are verified once per fingerprint."""
        folder = self.path(name, version)
        try:
            manifest = Manifest.load(folder)
        except NewerManifest as e:
            # Complete as far as this code can tell, and never servable by it: say so.
            return VersionStatus(name, version, VersionState.REJECTED, str(e))
        except StoreError as e:
            return VersionStatus(name, version, VersionState.PENDING, str(e))
        fingerprint = _fingerprint(folder, manifest)
        if fingerprint is None:
            return VersionStatus(name, version, VersionState.PENDING, "files still arriving", manifest)
        # A verdict holds for these files under these keys.
        trust = self.trust_for(name)
        identity = trust.identity if trust is not None else None
        with self._lock:
            cached = self._looked.get((name, version))
        if cached and cached[:2] == (fingerprint, identity):
            return cached[2]
        status = self._examine(folder, manifest)
        with self._lock:
            self._looked[(name, version)] = (fingerprint, identity, status)
        return status

    def _examine(self, folder: Path, manifest: Manifest) -> VersionStatus:
        name, version = folder.parent.name, int(folder.name)
        if (manifest.name, manifest.version) != (name, version):
            reason = f"manifest describes {manifest.name}:{manifest.version} but lies in {name}/{version}"
            return VersionStatus(name, version, VersionState.REJECTED, reason, manifest)
        report = verify_version(
            folder, manifest, self.hashes, trust_pickle=self.trust_pickle, trust=self.trust_for(name)
        )
        state = VersionState.VALID if report.ok else VersionState.REJECTED
        return VersionStatus(name, version, state, report.reason, manifest, report)

    def verify(self, name: str, version: int | str) -> VerifyReport:
        """Checksums, signature and golden outputs of every artifact, checked now."""
        folder = self._existing(name, version)
        try:
            manifest = Manifest.load(folder)
        except NewerManifest as e:
            return VerifyReport(name, int(version), problems=[str(e)])
        status = self._examine(folder, manifest)
        if status.report is not None:
            return status.report
        return VerifyReport(name, int(version), problems=[status.reason])

    def resolve(self, name: str, policy: str | VersionPolicy = "latest", *, servable: bool = False) -> int:
        """The version a policy picks among valid versions (servable ones only if asked)."""
        pol = VersionPolicy.parse(policy) if isinstance(policy, str) else policy
        return choose_version(name, pol, self.statuses(name), servable)

    # ---- publishing ----------------------------------------------------------------------
    def publish(
        self,
        name: str,
        model: torch.nn.Module,
        *,
        example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
        metrics: dict[str, float] | None = None,
        formats: tuple[str, ...] = ("onnx", "torchscript", "state_dict"),
        model_factory: str | Callable[..., torch.nn.Module] | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        data_files: Mapping[str, _publish.DataSource] | None = None,
        sign: SigningKey | None = None,
        **options: Any,
    ) -> int:
        """Export, check and atomically land a new version; returns its number.

        `sign`: a `SigningKey` whose signature (`model.sig`, OpenSSF model signing) covers every
        file of the version, manifest included, and lands with it.

        `data_files` maps a plain file name to its content (bytes) or a file to copy (a path):
        data a handler reads (`{"labels.json": b'["cat", "dog"]'}`), checksummed like artifacts.
        Options: input_names, output_names, opset, torchscript_method ('trace'|'script'),
        atol, rtol, description, tags, training, trust_pickle. Refuses to land a version whose
        exports do not reproduce the eager model's outputs on `example_inputs`.
        """
        check_name(name)
        plan = _publish.plan(
            model,
            example_inputs,
            formats,
            model_factory,
            factory_kwargs,
            data_files=data_files,
            metrics=metrics,
            trust_pickle=options.pop("trust_pickle", self.trust_pickle),
            **options,
        )
        return self._land(name, plan, sign)

    def publish_artifact(
        self,
        name: str,
        fmt: str,
        path: str | os.PathLike[str],
        *,
        example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
        data_files: Mapping[str, _publish.DataSource] | None = None,
        sign: SigningKey | None = None,
        **options: Any,
    ) -> int:
        """Check and land a version from an artifact made elsewhere (`fmt` 'onnx' or
        'torchscript'), copied byte for byte; its outputs on `example_inputs` become the golden
        outputs. Options: metrics, atol, rtol, description, tags, training."""
        check_name(name)
        plan = plan_prebuilt(fmt, Path(path), example_inputs, data_files=data_files, **options)
        return self._land(name, plan, sign)

    def sign(self, name: str, version: int | str, key: SigningKey) -> str:
        """Sign a version already in the store, in place; returns the key's fingerprint.

        Only an intact version is signed (every listed file present with its manifest sha256):
        a signature vouches for what the publisher made, not for whatever the folder holds now.
        """
        folder = self._existing(name, version)
        manifest = Manifest.load(folder)
        problems = check_files(folder, manifest, self.hashes)
        if problems:
            raise StoreError(f"{name}:{version} is not intact, not signing it: {'; '.join(problems)}")
        return sign_folder(folder, key, f"{name}/{check_version(version)}", self.hashes)

    def _land(self, name: str, plan: _publish.Plan, sign: SigningKey | None = None) -> int:
        """Reserve a number, build the version in its staging folder and rename it into place."""
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        version, staging = reserve_version(model_dir)
        try:
            manifest = _publish.build(plan, name, version, staging, self.hashes)
            manifest.dump(staging)
            if sign is not None:  # inside the staging folder: the version appears signed or not at all
                sign_folder(staging, sign, f"{name}/{version}", self.hashes)
            _fsync_tree(staging)
            os.rename(staging, model_dir / str(version))
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version


def choose_version(name: str, policy: VersionPolicy, statuses: list[VersionStatus], servable: bool) -> int:
    candidates = {
        s.version: s.manifest.metrics
        for s in statuses
        if s.state is VersionState.VALID and s.manifest and (s.servable or not servable)
    }
    chosen = policy.choose(candidates)
    if chosen is None:
        raise StoreError(f"no valid version of {name!r} matches policy {policy}")
    return chosen


def reserve_version(model_dir: Path) -> tuple[int, Path]:
    """Take the next number by creating its hidden staging folder; mkdir is the atomic claim.

    Numbers count every numeric folder and reservation, valid or not, so none is reused.
    """
    for _ in range(1000):
        taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        taken += [
            int(p.name[len(STAGING_PREFIX) :])
            for p in model_dir.iterdir()
            if p.name.startswith(STAGING_PREFIX) and p.name[len(STAGING_PREFIX) :].isdigit()
        ]
        version = max(taken, default=0) + 1
        staging = model_dir / f"{STAGING_PREFIX}{version}"
        try:
            staging.mkdir()
        except FileExistsError:
            continue  # another publisher claimed it first
        if (model_dir / str(version)).exists():
            # A publisher that held this reservation has already landed it: try the next.
            staging.rmdir()
            continue
        return version, staging
    raise StoreError(f"could not reserve a version number in {model_dir}")


def _fingerprint(folder: Path, manifest: Manifest) -> tuple[Any, ...] | None:
    """(size, mtime) of the manifest, every listed file and the signature (if any), and the
    folder's listing (a file added beside signed ones must be seen); None while a listed file is
    missing or short."""
    try:
        listing = sorted(os.listdir(folder))
    except OSError:
        return None
    try:
        st = (folder / SIGNATURE_NAME).stat()
        parts: list[Any] = [(SIGNATURE_NAME, st.st_size, st.st_mtime_ns)]
    except OSError:
        parts = [(SIGNATURE_NAME, None)]
    for rel, want in [(MANIFEST_NAME, None), *((f.path, f.size) for f in manifest.files)]:
        try:
            st = (folder / rel).stat()
        except OSError:
            return None
        if want is not None and st.st_size != want:
            return None
        parts.append((rel, st.st_size, st.st_mtime_ns))
    return (*parts, tuple(listing))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)
