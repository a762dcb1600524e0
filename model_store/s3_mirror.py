"""Mirror sync: a bucket's versions brought into a local folder that the folder rules then judge.

Reading never loads from the bucket directly. Each look at a model lists its objects once (one
paginated ListObjectsV2) and brings its mirror folder (`<mirror>/<model>/<n>/`) up to date; the
folder store's rules then decide what is pending, rejected or valid, on the mirror, so the two
kinds of store cannot disagree, and a serving process can load from the mirror as from a folder:

- every version in the bucket has a folder in the mirror; one whose manifest is missing, or
  whose listed files are not all in the bucket with their listed sizes, holds only its
  manifest (so it is pending, exactly as a half-copied folder);
- a complete version that is wanted is downloaded into `.download-<n>/` and renamed into
  place once whole, so a partial download is never looked at; an interrupted download resumes
  (files already fetched, and byte ranges of the one in flight, are kept while their ETags
  match); unchanged files are hard-linked, not downloaded again;
- a version gone from the bucket is gone from the mirror (rollback on delete works as on disk).

Which complete versions are wanted is each model's `Retention`: with `keep=None` (the library
default) every one, so `versions()` sees what a folder store would. With `keep=K` only what
`policy` can pick: complete versions in the policy's order of preference, up to and including
the K-th servable valid one (rejected ones met on the way are kept, to be looked at once), plus
the newest complete version, so a new publish is always checked and reported. Every other
complete version is reduced to its manifest and reported pending, "not mirrored", until it
becomes one the policy can pick.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError
from .manifest import MANIFEST_NAME, Manifest
from .policy import VersionPolicy
from .s3_bucket import VERSION_NAME, ObjectChanged, Objects, S3Bucket
from .signing import SIGNATURE_NAME
from .store import VersionState, VersionStatus, check_name

ORIGIN_NAME = ".s3-origin.json"  # in the mirror root: which bucket and endpoint it mirrors
RECORD_NAME = ".objects.json"  # in each mirror folder: file -> [size, ETag] as it was in the bucket
_UNMIRRORABLE = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EINVAL)

# The folder store's verdict on a mirrored version (verified once per fingerprint).
Examine = Callable[[str, int], VersionStatus]


@dataclass(frozen=True)
class Retention:
    """Which complete versions of a model the mirror holds (see the module docstring)."""

    keep: int | None
    policy: VersionPolicy

    @classmethod
    def of(cls, keep: int | None, policy: str | VersionPolicy) -> Retention:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise StoreError(f"keep must be an integer of at least 1 (or None to mirror every version), got {keep!r}")
        return cls(keep, VersionPolicy.parse(policy) if isinstance(policy, str) else policy)

    def __str__(self) -> str:
        if self.keep is None:
            return "every complete version"
        return f"up to {self.keep} servable version(s) that policy {self.policy} prefers"


class Mirror:
    """The local mirror of one bucket store, synced one model at a time.

    `retain` sets a model's retention; others use the store-wide `default`. Processes sharing
    the folder take turns on a model (a file lock).
    """

    def __init__(self, root: Path, bucket: S3Bucket, default: Retention, examine: Examine) -> None:
        self.root, self.bucket, self.default = root, bucket, default
        self._examine = examine
        self._retention: dict[str, Retention] = {}
        self._origin_checked = False
        self._unmirrored: dict[str, tuple[set[int], Retention]] = {}  # complete, beyond the retention
        self._unmirrorable: dict[tuple[str, int], tuple[object, str]] = {}  # bucket fingerprint, reason
        self._remote: dict[str, dict[int, Objects]] = {}  # the last listing of each model

    def retain(self, name: str, retention: Retention) -> None:
        self._retention[check_name(name)] = retention

    def retention(self, name: str) -> Retention:
        return self._retention.get(name, self.default)

    def init(self) -> Path:
        """Create the mirror root and its origin marker; returns the root.

        A mirror that belongs to another endpoint (same bucket name elsewhere) is emptied first.
        """
        if self._origin_checked:
            return self.root
        self.root.mkdir(parents=True, exist_ok=True)
        origin = {"url": self.bucket.url, "endpoint": self.bucket.endpoint}
        with _locked(self.root / ".lock"):
            marker = self.root / ORIGIN_NAME
            try:
                current = json.loads(marker.read_text())
            except (OSError, ValueError):
                current = None
            if current != origin:
                if current is not None:
                    for p in self.root.iterdir():
                        if p.is_dir() and not p.name.startswith("."):
                            shutil.rmtree(p, ignore_errors=True)
                _write_json(marker, origin)
        self._origin_checked = True
        return self.root

    @contextlib.contextmanager
    def look(self, name: str, policy: VersionPolicy | None = None) -> Iterator[dict[int, Objects]]:
        """List the bucket (outside the lock), then sync the mirror; the body reads it under the lock.

        `policy` replaces the model's retention policy for this look (keeping its `keep`).
        """
        check_name(name)
        remote = self.bucket.versions(name)
        self.init()
        retention = self.retention(name)
        if policy is not None:
            retention = Retention(retention.keep, policy)
        with _locked(self.root / name / ".lock"):
            self._sync(name, remote, retention)
            yield remote

    def held_back(self, name: str, version: int) -> VersionStatus | None:
        """The status of a version the last sync left out of the mirror on purpose, else None."""
        bad = self._unmirrorable.get((name, version))
        if bad is not None and bad[0] == _fingerprint(self._remote.get(name, {}).get(version, {})):
            return VersionStatus(name, version, VersionState.REJECTED, bad[1])
        unmirrored, retention = self._unmirrored.get(name, (set(), self.default))
        if version in unmirrored:
            reason = f"complete in the bucket, not mirrored (the cache keeps {retention})"
            return VersionStatus(name, version, VersionState.PENDING, reason)
        return None

    def fetch(self, name: str, version: int, objects: Objects, files: list[str]) -> None:
        """Make the mirror folder of `version` hold exactly `files` as they are in the bucket.

        A whole version is built in `.download-<n>/`, kept across interruptions (and where a
        publish leaves what it uploaded); a manifest alone in a fresh `.placeholder-<n>/`.
        Either is renamed into place, so the folder is always a whole earlier or later state.
        """
        model_dir = self.root / name
        final = model_dir / str(version)
        wanted = {rel: objects[rel] for rel in files}
        current = _record(final)
        whole = set(files) - {MANIFEST_NAME}
        download = model_dir / f".download-{version}"
        if final.is_dir() and current == wanted:
            if whole:
                shutil.rmtree(download, ignore_errors=True)
            return
        sources = [(final, current)]  # where a file may already be, to link rather than download
        if whole:
            tmp = download
        else:
            tmp = model_dir / f".placeholder-{version}"
            shutil.rmtree(tmp, ignore_errors=True)
            sources.append((download, _record(download)))
        tmp.mkdir(parents=True, exist_ok=True)
        have = _record(tmp)
        for rel in set(have) - set(wanted):
            with contextlib.suppress(OSError):
                (tmp / rel).unlink()
        have = {rel: meta for rel, meta in have.items() if wanted.get(rel) == meta}
        for rel, meta in sorted(wanted.items()):
            if have.get(rel) == meta:
                continue
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            source = next((folder for folder, record in sources if record.get(rel) == meta), None)
            if source is not None:
                _link_or_copy(source / rel, dst)
            else:
                self.bucket.download(self.bucket.key(name, str(version), rel), meta[1], meta[0], dst)
            have[rel] = meta
            _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in have.items()})
        _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in have.items()})
        for part in tmp.rglob("*.part"):  # resumable bytes of objects that changed meanwhile
            if part.relative_to(tmp).as_posix() not in wanted:
                part.unlink()
        _replace_dir(tmp, final, model_dir)

    def adopt(self, name: str, version: int, staging: Path, uploaded: Objects) -> None:
        """Take what was just published as a finished download: no fetch of our own files."""
        self.init()
        model_dir = self.root / name
        with _locked(model_dir / ".lock"):
            tmp = model_dir / f".download-{version}"
            if tmp.exists():
                return
            shutil.copytree(staging, tmp, copy_function=_link_or_copy_fn)
            _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in uploaded.items()})

    def _tidy(self, name: str, remote: dict[int, Objects]) -> None:
        """Versions gone from the bucket leave the mirror; so do downloads for them and leftovers."""
        model_dir = self.root / name
        for p in model_dir.iterdir():
            if p.name.startswith((".trash-", ".placeholder-")):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".download-"):
                tail = p.name[len(".download-") :]
                if not (VERSION_NAME.match(tail) and int(tail) in remote):
                    shutil.rmtree(p, ignore_errors=True)
            elif VERSION_NAME.match(p.name) and int(p.name) not in remote:
                _remove_dir(p, model_dir)

    def _sync(self, name: str, remote: dict[int, Objects], retention: Retention) -> None:
        """Bring the mirror of one model in line with a listing of the bucket (the lock is held)."""
        self._remote[name] = remote
        for key in [k for k in self._unmirrorable if k[0] == name and k[1] not in remote]:
            del self._unmirrorable[key]
        self._tidy(name, remote)
        complete: dict[int, Manifest] = {}
        for version, objects in sorted(remote.items()):
            folder = self.root / name / str(version)
            manifest_meta = objects.get(MANIFEST_NAME)
            if not folder.is_dir() or _record(folder).get(MANIFEST_NAME) != manifest_meta:
                # New, or its manifest changed: start again from the manifest alone.
                try:
                    self.fetch(name, version, objects, [MANIFEST_NAME] if manifest_meta else [])
                except ObjectChanged:
                    continue
            if manifest_meta is None:
                continue
            try:
                manifest = Manifest.load(folder)
            except StoreError:
                continue  # pending: the folder rules report the unparsable manifest
            if all(objects.get(f.path, (-1, ""))[0] == f.size for f in manifest.files):
                complete[version] = manifest
        wanted = self._wanted(name, remote, complete, retention)
        for version, objects in remote.items():
            if version not in wanted:
                shutil.rmtree(self.root / name / f".download-{version}", ignore_errors=True)
                with contextlib.suppress(ObjectChanged):
                    self.fetch(name, version, objects, [MANIFEST_NAME] if MANIFEST_NAME in objects else [])
        self._unmirrored[name] = (set(complete) - wanted, retention)

    def _wanted(
        self, name: str, remote: dict[int, Objects], complete: dict[int, Manifest], retention: Retention
    ) -> set[int]:
        """Mirror complete versions in the policy's order until `keep` servable valid ones are here,
        and the newest complete one (its state is news, whatever the policy makes of it)."""
        wanted: set[int] = set()
        candidates = {v: m.metrics for v, m in complete.items()}

        def take(version: int) -> bool:
            """Mirror one version; True when it is servable and valid."""
            del candidates[version]
            files = [MANIFEST_NAME, *(f.path for f in complete[version].files)]
            files += [SIGNATURE_NAME] if SIGNATURE_NAME in remote[version] else []
            try:
                self.fetch(name, version, remote[version], files)
            except ObjectChanged:
                return False
            except OSError as e:
                if e.errno not in _UNMIRRORABLE:
                    raise  # the cache's trouble (a full disk): the look fails and is retried
                # The version's own paths cannot be files here ("a" and "a/b", a name too long).
                self._unmirrorable[(name, version)] = (_fingerprint(remote[version]), f"cannot be mirrored: {e}")
                return False
            wanted.add(version)
            status = self._examine(name, version)
            return status.state is VersionState.VALID and bool(status.servable)

        keep, policy = retention.keep, retention.policy
        found = 0
        while candidates and (keep is None or found < keep):
            version = max(candidates) if keep is None else policy.choose(candidates)
            if version is None:
                break  # the policy can pick none of the rest
            found += take(version)
        newest = max(complete, default=None)
        if newest is not None and newest in candidates:
            take(newest)
        return wanted


# ---- files -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on a file: one sync at a time per mirror folder, across processes and threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one process per cache dir, then
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _record(folder: Path) -> Objects:
    """The files of a mirror folder as they were in the bucket, counting only those still there."""
    try:
        raw = json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}
    found: Objects = {}
    if not isinstance(raw, dict):
        return found
    for rel, meta in raw.items():
        if not (isinstance(meta, list) and len(meta) == 2 and isinstance(meta[0], int)):
            continue
        try:
            if (folder / rel).stat().st_size == meta[0]:
                found[str(rel)] = (meta[0], str(meta[1]))
        except OSError:
            continue
    return found


def _fingerprint(objects: Objects) -> object:
    return tuple(sorted(objects.items()))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dst)


def _link_or_copy_fn(src: str, dst: str) -> None:
    _link_or_copy(Path(src), Path(dst))


def _remove_dir(folder: Path, model_dir: Path) -> None:
    """Rename away first: no reader ever sees a half-deleted version folder."""
    trash = model_dir / f".trash-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _replace_dir(new: Path, final: Path, model_dir: Path) -> None:
    if final.exists():
        _remove_dir(final, model_dir)
    os.rename(new, final)
