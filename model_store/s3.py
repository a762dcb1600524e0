"""`ModelStore("s3://bucket/prefix")`: a store on S3-compatible object storage.

Publishing goes to the bucket (`s3_publish`); listing, verifying and resolving go through a
local mirror kept in sync with it (`s3_mirror`), on which the folder store's rules apply, so
both kinds of store agree on what is pending, rejected or valid. Importing this module
registers the `s3://` scheme with `ModelStore` (`model_store/__init__.py` does).
"""

from __future__ import annotations

import contextlib
import enum
import os
from pathlib import Path
from typing import Any

from . import publish as _publish
from . import s3_publish
from .errors import StoreError
from .manifest import MANIFEST_NAME, Manifest
from .policy import VersionPolicy
from .s3_bucket import Objects, S3Bucket
from .s3_mirror import Mirror, Retention
from .signing import SIGNATURE_NAME, SigningKey, TrustPolicy
from .store import ModelStore, VersionStatus, check_name, choose_version, register_scheme
from .verify import VerifyReport


class StoreWide(enum.Enum):
    """The default of `S3ModelStore.retain`: the store's own value (None is a value: every version)."""

    VALUE = "store-wide"


STORE_WIDE = StoreWide.VALUE


def default_cache_dir() -> Path:
    """MODELDOCK_CACHE_DIR, else $XDG_CACHE_HOME/modeldock, else ~/.cache/modeldock."""
    if os.environ.get("MODELDOCK_CACHE_DIR"):
        return Path(os.environ["MODELDOCK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modeldock"


class S3ModelStore(ModelStore):
    """Publish to a bucket; list, verify and resolve through a mirror folder.

    `cache_dir` holds the mirror (default: MODELDOCK_CACHE_DIR, $XDG_CACHE_HOME/modeldock or
    ~/.cache/modeldock); `mirror` names the mirror root directly. `keep` and `policy` bound what
    the mirror holds of each model (see `model_store.s3_mirror`); `retain` sets them per model.
    `client` is a boto3 S3 client (default: one from the AWS environment). Errors reaching the
    bucket raise StoreError; the mirror is then left as it was.
    """

    def __init__(
        self,
        url: str,
        *,
        trust_pickle: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        keep: int | None = None,
        policy: str | VersionPolicy = "latest",
        mirror: str | os.PathLike[str] | None = None,
        client: Any = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        self.s3 = S3Bucket(url, client)
        self.url, self.bucket, self.prefix = self.s3.url, self.s3.name, self.s3.prefix
        default = Retention.of(keep, policy)
        if mirror is None:
            base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            mirror = base / "s3" / self.bucket / (self.prefix or "_")
        # Nothing is created here: a store that only lists models or publishes needs no mirror.
        super().__init__(mirror, trust_pickle=trust_pickle, trust=trust)
        self.mirror = Mirror(self.root, self.s3, default, self._folder_status)

    def __repr__(self) -> str:
        return f"ModelStore({self.url!r})"

    @property
    def location(self) -> str:
        return self.url

    @property
    def client(self) -> Any:
        return self.s3.client

    @property
    def keep(self) -> int | None:
        """How many servable versions of a model the mirror keeps, unless `retain` says otherwise."""
        return self.mirror.default.keep

    @property
    def policy(self) -> VersionPolicy:
        return self.mirror.default.policy

    # ---- the mirror ------------------------------------------------------------------------
    def init_mirror(self) -> Path:
        """Create the mirror folder (emptied if it mirrored another endpoint); returns its path.

        A folder store on that path (`ModelStore(path)`) sees what this store last synced.
        """
        return self.mirror.init()

    def retain(
        self,
        name: str,
        *,
        keep: int | StoreWide | None = STORE_WIDE,
        policy: str | VersionPolicy | StoreWide = STORE_WIDE,
    ) -> None:
        """Set how much of one model the mirror holds: up to `keep` servable versions that `policy`
        prefers (None: every complete version). Either left out is the store's; the next look
        at the model (`statuses`, `sync`, …) applies it."""
        default = self.mirror.default
        self.mirror.retain(
            check_name(name),
            Retention.of(
                default.keep if isinstance(keep, StoreWide) else keep,
                default.policy if isinstance(policy, StoreWide) else policy,
            ),
        )

    def retention(self, name: str) -> Retention:
        """What the mirror holds of a model: its `retain` values, else the store's."""
        return self.mirror.retention(check_name(name))

    def sync(self, name: str) -> None:
        """Bring the mirror of one model up to date with the bucket now."""
        with self.mirror.look(name):
            pass

    def remote_versions(self, name: str) -> dict[int, Objects]:
        """Every version folder of a model in the bucket with its objects (one listing)."""
        return self.s3.versions(name)

    def _folder_status(self, name: str, version: int) -> VersionStatus:
        return super().status(name, version)

    # ---- the ModelStore interface ------------------------------------------------------------
    def models(self) -> list[str]:
        """Model names under the prefix (one delimited listing)."""
        return self.s3.models()

    def version_folders(self, name: str) -> list[int]:
        with self.mirror.look(name):
            return super().version_folders(name)

    def statuses(self, name: str) -> list[VersionStatus]:
        with self.mirror.look(name):
            return [self.status(name, v) for v in super().version_folders(name)]

    def status(self, name: str, version: int) -> VersionStatus:
        """The mirror's state as of the last sync (a look at one version does not list the bucket)."""
        return self.mirror.held_back(name, version) or super().status(name, version)

    def manifest(self, name: str, version: int | str) -> dict[str, Any]:
        self.sync(name)
        return super().manifest(name, version)

    def verify(self, name: str, version: int | str) -> VerifyReport:
        """Download the version if the retention left it out, then check it now."""
        with self.mirror.look(name) as remote:
            objects = remote.get(int(version)) if str(version).isdigit() else None
            folder = self.path(name, version)
            manifest = None
            if objects is not None and folder.is_dir():
                with contextlib.suppress(StoreError):  # no usable manifest: the folder's verify says so
                    manifest = Manifest.load(folder)
            if objects is not None and manifest is not None:
                files = [MANIFEST_NAME, *(f.path for f in manifest.files if f.path in objects)]
                files += [SIGNATURE_NAME] if SIGNATURE_NAME in objects else []
                self.mirror.fetch(name, int(version), objects, files)
            return super().verify(name, version)

    def resolve(self, name: str, policy: str | VersionPolicy = "latest", *, servable: bool = False) -> int:
        """Like a folder store's; the mirror is first synced for `policy` (it fetches what it picks)."""
        pol = VersionPolicy.parse(policy) if isinstance(policy, str) else policy
        with self.mirror.look(name, pol):
            statuses = [self.status(name, v) for v in super().version_folders(name)]
            return choose_version(name, pol, statuses, servable)

    # ---- publishing ----------------------------------------------------------------------------
    def reserve(self, name: str) -> int:
        """Claim the next version number of a model in the bucket (see `s3_publish.reserve`)."""
        return s3_publish.reserve(self.s3, name)

    def _land(self, name: str, plan: _publish.Plan, sign: SigningKey | None = None) -> int:
        # The mirror adopts the upload as a finished download: nothing published is fetched back.
        return s3_publish.land(self.s3, name, plan, self.hashes, uploaded=self.mirror.adopt, sign=sign)

    def sign(self, name: str, version: int | str, key: SigningKey) -> str:
        """Sign an intact version of the bucket: checked in the mirror, the signature uploaded."""
        self.verify(name, version)  # fetches the whole version into the mirror
        folder = self.path(name, version)
        fp = super().sign(name, version, key)
        s3_publish.upload_signature(self.s3, name, int(version), folder / SIGNATURE_NAME)
        return fp


register_scheme("s3", S3ModelStore)
