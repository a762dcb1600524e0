"""A model store on S3-compatible object storage, read through a local mirror.

In the bucket, a store is the folder layout under a key prefix: `<prefix>/<model>/<n>/<file>`,
plus an empty-ish object `<prefix>/<model>/.staging-<n>` per reserved number. Publishing
uploads every file first and the manifest last.

Reading never loads from the bucket directly. Each look at a model lists its objects once
(one paginated ListObjectsV2) and brings a mirror folder up to date
(`<cache>/s3/<bucket>/<prefix>/<model>/<n>/`); the folder store's rules then decide what is
pending, rejected or valid, on the mirror, so the two kinds of store cannot disagree:

- every version in the bucket has a folder in the mirror; one whose manifest is missing, or
  whose listed files are not all in the bucket with their listed sizes, holds only its
  manifest (so it is pending, exactly as a half-copied folder);
- a complete version that is wanted is downloaded into `.download-<n>/` and renamed into
  place once whole, so a partial download is never looked at; an interrupted download resumes
  (files already fetched, and byte ranges of the one in flight, are kept while their ETags
  match); unchanged files are hard-linked, not downloaded again;
- a version gone from the bucket is gone from the mirror (rollback on delete works as on disk).

Which complete versions are wanted (the cache bound): with `keep=None` (the library default)
every one, so `versions()` sees what a folder store would. With `keep=K` (the server uses 2)
only what `policy` can pick: complete versions in the policy's order of preference, up to and
including the K-th servable valid one (rejected ones met on the way are kept, to be looked at
once), plus the newest complete version, so a new publish is always checked and reported. Every
other complete version is reduced to its manifest and reported pending, "not mirrored", until
it becomes one the policy can pick.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import publish as _publish
from .errors import StoreError
from .manifest import MANIFEST_NAME, Manifest
from .policy import VersionPolicy
from .store import S3_SCHEME, STAGING_PREFIX, ModelStore, VersionState, VersionStatus, check_name, choose_version
from .verify import VerifyReport

ORIGIN_NAME = ".s3-origin.json"  # in the mirror root: which bucket and endpoint it mirrors
RECORD_NAME = ".objects.json"  # in each mirror folder: file -> [size, ETag] as it was in the bucket
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_CHUNK = 1 << 20

Objects = dict[str, tuple[int, str]]  # a version's files in the bucket: relative path -> (size, ETag)


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith(S3_SCHEME):
        raise StoreError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
        raise StoreError(f"{url!r}: {bucket!r} is not a valid bucket name")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise StoreError(f"{url!r}: the key prefix may not have empty, '.' or '..' parts")
    return bucket, prefix


def default_cache_dir() -> Path:
    """MODELDOCK_CACHE_DIR, else $XDG_CACHE_HOME/modeldock, else ~/.cache/modeldock."""
    if os.environ.get("MODELDOCK_CACHE_DIR"):
        return Path(os.environ["MODELDOCK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modeldock"


def make_client() -> Any:
    """An S3 client from the standard AWS environment (AWS_ENDPOINT_URL, credentials, region).

    Timeouts are short enough that a poll against an unreachable endpoint fails in seconds
    rather than minutes; AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, when set, decide the retries.
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    options: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 30}
    if not ({"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ)):
        options["retries"] = {"mode": "standard", "max_attempts": 3}
    return boto3.session.Session().client("s3", config=Config(**options))


def _error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def _is_boto_error(e: BaseException) -> bool:
    return type(e).__module__.startswith(("botocore", "boto3", "s3transfer", "urllib3"))


class _Changed(StoreError):
    """An object was replaced or deleted after the listing: the next look sees its new state."""


_GONE = ("PreconditionFailed", "412", "NoSuchKey", "404")
_UNMIRRORABLE = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EINVAL)


class S3ModelStore(ModelStore):
    """`ModelStore("s3://bucket/prefix")`: publish to a bucket; list, verify and resolve through a mirror.

    `cache_dir` holds the mirror (default: MODELDOCK_CACHE_DIR, $XDG_CACHE_HOME/modeldock or
    ~/.cache/modeldock); `mirror` names the mirror root directly. `keep` and `policy` bound the
    mirror (see the module docstring). `client` is a boto3 S3 client (default: `make_client()`).
    Errors reaching the bucket raise StoreError; the mirror is then left as it was.
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
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_url(self.url)
        if keep is not None and keep < 1:
            raise StoreError(f"keep must be at least 1 (or None to mirror every version), got {keep}")
        if mirror is None:
            base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            mirror = base / "s3" / self.bucket / (self.prefix or "_")
        # Nothing is created here: a store that only lists models or publishes needs no mirror.
        super().__init__(mirror, trust_pickle=trust_pickle)
        self.keep = keep
        self.policy = VersionPolicy.parse(policy) if isinstance(policy, str) else policy
        self._client = client
        self._origin_checked = False
        self._unmirrored: dict[str, set[int]] = {}  # complete in the bucket, beyond the keep rule
        self._unmirrorable: dict[tuple[str, int], tuple[object, str]] = {}  # bucket fingerprint, reason
        self._remote: dict[str, dict[int, Objects]] = {}  # the last listing of each model

    def __repr__(self) -> str:
        return f"ModelStore({self.url!r})"

    @property
    def location(self) -> str:
        return self.url

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    # ---- the bucket ------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Turn boto's exceptions into StoreError naming the store and what was being done."""
        try:
            yield
        except StoreError:
            raise
        except Exception as e:
            if not _is_boto_error(e):
                raise
            raise StoreError(f"{self.url}: {what} failed: {e}") from e

    def _pages(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        args = {"Bucket": self.bucket, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        with self._calls(f"listing {prefix or '/'}"):
            yield from paginator.paginate(**args)

    def models(self) -> list[str]:
        """Model names under the prefix (one delimited listing)."""
        base = self._key() + "/" if self.prefix else ""
        names = set()
        for page in self._pages(base, "/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(base) :].rstrip("/")
                with contextlib.suppress(StoreError):
                    names.add(check_name(name))
        return sorted(names)

    def remote_versions(self, name: str) -> dict[int, Objects]:
        """Every version folder of a model in the bucket with its objects: one ListObjectsV2 (paginated)."""
        base = self._key(check_name(name)) + "/"
        found: dict[int, Objects] = {}
        for page in self._pages(base):
            for obj in page.get("Contents", []):
                head, _, rest = obj["Key"][len(base) :].partition("/")
                if not _VERSION.match(head):
                    continue  # reservations, stray objects
                files = found.setdefault(int(head), {})
                if rest and not rest.endswith("/"):  # "3/" alone is a console's folder marker
                    files[rest] = (int(obj["Size"]), str(obj["ETag"]))
        return found

    def _download(self, key: str, etag: str, size: int, dst: Path) -> None:
        """Fetch one object into `dst`, resuming a partial file of the same ETag; IfMatch pins the content."""
        part = dst.with_name(f"{dst.name}.{re.sub(r'[^A-Za-z0-9]', '', etag)[:40]}.part")
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size or size == 0:
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "IfMatch": etag}
            if have:
                args["Range"] = f"bytes={have}-"
            with self._calls(f"downloading {key}"):
                try:
                    body = self.client.get_object(**args)["Body"]
                except Exception as e:
                    if _error_code(e) in _GONE:
                        part.unlink(missing_ok=True)
                        raise _Changed(f"{self.url}: {key} changed since it was listed") from e
                    raise
                with part.open("ab") as f:
                    for chunk in body.iter_chunks(_CHUNK):
                        f.write(chunk)
        if part.stat().st_size != size:
            part.unlink()
            raise _Changed(f"{self.url}: {key} changed while downloading")
        os.replace(part, dst)

    # ---- the mirror ------------------------------------------------------------------------
    def init_mirror(self) -> Path:
        """Create the mirror root and its origin marker (which lets a worker reopen it by path).

        A mirror that belongs to another endpoint (same bucket name elsewhere) is emptied first.
        """
        if self._origin_checked:
            return self.root
        self.root.mkdir(parents=True, exist_ok=True)
        origin = {"url": self.url, "endpoint": str(getattr(getattr(self.client, "meta", None), "endpoint_url", ""))}
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

    def _folders(self, name: str) -> list[int]:
        return super().version_folders(name)

    def _mirror(self, name: str, version: int, objects: Objects, files: list[str]) -> None:
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
                self._download(self._key(name, str(version), rel), meta[1], meta[0], dst)
            have[rel] = meta
            _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in have.items()})
        _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in have.items()})
        for part in tmp.rglob("*.part"):  # resumable bytes of objects that changed meanwhile
            if part.relative_to(tmp).as_posix() not in wanted:
                part.unlink()
        _replace_dir(tmp, final, model_dir)

    def _tidy(self, name: str, remote: dict[int, Objects]) -> None:
        """Versions gone from the bucket leave the mirror; so do downloads for them and leftovers."""
        model_dir = self.root / name
        for p in model_dir.iterdir():
            if p.name.startswith((".trash-", ".placeholder-")):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".download-"):
                tail = p.name[len(".download-") :]
                if not (_VERSION.match(tail) and int(tail) in remote):
                    shutil.rmtree(p, ignore_errors=True)
            elif _VERSION.match(p.name) and int(p.name) not in remote:
                _remove_dir(p, model_dir)

    def _sync(self, name: str, remote: dict[int, Objects], policy: VersionPolicy) -> None:
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
                    self._mirror(name, version, objects, [MANIFEST_NAME] if manifest_meta else [])
                except _Changed:
                    continue
            if manifest_meta is None:
                continue
            try:
                manifest = Manifest.load(folder)
            except StoreError:
                continue  # pending: the folder rules report the unparsable manifest
            if all(objects.get(f.path, (-1, ""))[0] == f.size for f in manifest.files):
                complete[version] = manifest
        wanted = self._wanted(name, remote, complete, policy)
        for version, objects in remote.items():
            if version not in wanted:
                shutil.rmtree(self.root / name / f".download-{version}", ignore_errors=True)
                with contextlib.suppress(_Changed):
                    self._mirror(name, version, objects, [MANIFEST_NAME] if MANIFEST_NAME in objects else [])
        self._unmirrored[name] = set(complete) - wanted

    def _wanted(
        self, name: str, remote: dict[int, Objects], complete: dict[int, Manifest], policy: VersionPolicy
    ) -> set[int]:
        """Mirror complete versions in the policy's order until `keep` servable valid ones are here,
        and the newest complete one (its state is news, whatever the policy makes of it)."""
        wanted: set[int] = set()
        candidates = {v: m.metrics for v, m in complete.items()}

        def take(version: int) -> bool:
            """Mirror one version; True when it is servable and valid."""
            del candidates[version]
            files = [MANIFEST_NAME, *(f.path for f in complete[version].files)]
            try:
                self._mirror(name, version, remote[version], files)
            except _Changed:
                return False
            except OSError as e:
                if e.errno not in _UNMIRRORABLE:
                    raise  # the cache's trouble (a full disk): the look fails and is retried
                # The version's own paths cannot be files here ("a" and "a/b", a name too long).
                self._unmirrorable[(name, version)] = (_fingerprint(remote[version]), f"cannot be mirrored: {e}")
                return False
            wanted.add(version)
            status = super(S3ModelStore, self).status(name, version)
            return status.state is VersionState.VALID and bool(status.servable)

        found = 0
        while candidates and (self.keep is None or found < self.keep):
            version = max(candidates) if self.keep is None else policy.choose(candidates)
            if version is None:
                break  # the policy can pick none of the rest
            found += take(version)
        newest = max(complete, default=None)
        if newest is not None and newest in candidates:
            take(newest)
        return wanted

    @contextlib.contextmanager
    def _look(self, name: str, policy: VersionPolicy | None = None) -> Iterator[dict[int, Objects]]:
        """List the bucket (outside the lock), then sync the mirror and read it under the lock."""
        check_name(name)
        remote = self.remote_versions(name)
        self.init_mirror()
        with _locked(self.root / name / ".lock"):
            self._sync(name, remote, policy or self.policy)
            yield remote

    # ---- the ModelStore interface ------------------------------------------------------------
    def sync(self, name: str) -> None:
        """Bring the mirror of one model up to date with the bucket now."""
        with self._look(name):
            pass

    def version_folders(self, name: str) -> list[int]:
        with self._look(name):
            return self._folders(name)

    def statuses(self, name: str) -> list[VersionStatus]:
        with self._look(name):
            return [self.status(name, v) for v in self._folders(name)]

    def status(self, name: str, version: int) -> VersionStatus:
        """The mirror's state as of the last sync (a look at one version does not list the bucket)."""
        bad = self._unmirrorable.get((name, version))
        if bad is not None and bad[0] == _fingerprint(self._remote.get(name, {}).get(version, {})):
            return VersionStatus(name, version, VersionState.REJECTED, bad[1])
        if version in self._unmirrored.get(name, ()):
            keep = f"up to {self.keep} servable version(s) that policy {self.policy} prefers"
            reason = f"complete in the bucket, not mirrored (the cache keeps {keep})"
            return VersionStatus(name, version, VersionState.PENDING, reason)
        return super().status(name, version)

    def manifest(self, name: str, version: int | str) -> dict[str, Any]:
        self.sync(name)
        return super().manifest(name, version)

    def verify(self, name: str, version: int | str) -> VerifyReport:
        """Download the version if the keep rule left it out, then check it now."""
        with self._look(name) as remote:
            objects = remote.get(int(version)) if str(version).isdigit() else None
            folder = self.path(name, version)
            manifest = None
            if objects is not None and folder.is_dir():
                with contextlib.suppress(StoreError):  # no usable manifest: the folder's verify says so
                    manifest = Manifest.load(folder)
            if objects is not None and manifest is not None:
                files = [MANIFEST_NAME, *(f.path for f in manifest.files if f.path in objects)]
                self._mirror(name, int(version), objects, files)
            return super().verify(name, version)

    def resolve(self, name: str, policy: str | VersionPolicy = "latest", *, servable: bool = False) -> int:
        pol = VersionPolicy.parse(policy) if isinstance(policy, str) else policy
        with self._look(name, pol):
            return choose_version(name, pol, [self.status(name, v) for v in self._folders(name)], servable)

    # ---- publishing ----------------------------------------------------------------------------
    def _taken(self, name: str) -> set[int]:
        """Numbers in use: version folders and reservations, valid or not."""
        base = self._key(name) + "/"
        taken: set[int] = set()
        for page in self._pages(base, "/"):
            for cp in page.get("CommonPrefixes", []):
                head = cp["Prefix"][len(base) :].rstrip("/")
                if _VERSION.match(head):
                    taken.add(int(head))
            for obj in page.get("Contents", []):
                tail = obj["Key"][len(base) :]
                if tail.startswith(STAGING_PREFIX) and _VERSION.match(tail[len(STAGING_PREFIX) :]):
                    taken.add(int(tail[len(STAGING_PREFIX) :]))
        return taken

    def reserve(self, name: str) -> int:
        """Claim the next number with a conditional put (`If-None-Match: *`) of `.staging-<n>`.

        The reservation stays after the version lands, so a number is never reused, even after
        its version is deleted. Its body is a random token read back after the put, a second line
        for servers that ignore the condition: a publisher that finds another's token moves on.
        """
        check_name(name)
        for _ in range(100):
            version = max(self._taken(name), default=0) + 1
            key = self._key(name, f"{STAGING_PREFIX}{version}")
            token = uuid.uuid4().hex.encode()
            try:
                with self._calls(f"reserving {key}"):
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=token, IfNoneMatch="*")
            except StoreError as e:
                if _error_code(e.__cause__ or e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    continue  # another publisher claimed it first
                raise
            with self._calls(f"reading back {key}"):
                if self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read() != token:
                    continue
            if any(page.get("KeyCount", 0) for page in self._pages(self._key(name, str(version)) + "/")):
                continue  # a copy that took no reservation landed there meanwhile
            return version
        raise StoreError(f"{self.url}: could not reserve a version number for {name!r}")

    def _upload(self, path: Path, key: str, *, last: bool = False) -> tuple[int, str]:
        with self._calls(f"uploading {key}"):
            if last:
                # The manifest: conditional, so a version's manifest is written once.
                etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes(), IfNoneMatch="*")[
                    "ETag"
                ]
                return path.stat().st_size, str(etag)
            self.client.upload_file(str(path), self.bucket, key)  # multipart for large files
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            return int(head["ContentLength"]), str(head["ETag"])

    def _land(self, name: str, plan: _publish.Plan) -> int:
        """Reserve a number, build locally, upload the files and then the manifest."""
        version = self.reserve(name)
        with tempfile.TemporaryDirectory(prefix="modeldock-publish-") as tmp:
            staging = Path(tmp) / "version"
            staging.mkdir()
            manifest = _publish.build(plan, name, version, staging, self.hashes)
            manifest.dump(staging)
            uploaded: Objects = {}
            try:
                for entry in manifest.files:
                    uploaded[entry.path] = self._upload(staging / entry.path, self._key(name, str(version), entry.path))
                key = self._key(name, str(version), MANIFEST_NAME)
                uploaded[MANIFEST_NAME] = self._upload(staging / MANIFEST_NAME, key, last=True)
            except BaseException:
                # Leave no half version behind (the reservation keeps the number used).
                with contextlib.suppress(Exception):
                    for rel in uploaded:
                        self.client.delete_object(Bucket=self.bucket, Key=self._key(name, str(version), rel))
                raise
            with contextlib.suppress(OSError):
                self._prime(name, version, staging, uploaded)
        return version

    def _prime(self, name: str, version: int, staging: Path, uploaded: Objects) -> None:
        """Hand what was just uploaded to the mirror as a finished download: no fetch of our own files."""
        self.init_mirror()
        model_dir = self.root / name
        with _locked(model_dir / ".lock"):
            tmp = model_dir / f".download-{version}"
            if tmp.exists():
                return
            shutil.copytree(staging, tmp, copy_function=_link_or_copy_fn)
            _write_json(tmp / RECORD_NAME, {k: list(v) for k, v in uploaded.items()})


def open_store(
    root: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    keep: int | None = None,
    policy: str | VersionPolicy = "latest",
) -> ModelStore:
    """The store whose folder is `root`: an S3 store when `root` is a mirror (it has an origin
    marker, written by `init_mirror`), else a folder store. Lets a process that was handed only
    a path (a server worker) reopen the bucket behind it."""
    try:
        origin = json.loads((Path(root) / ORIGIN_NAME).read_text())
    except (OSError, ValueError):
        return ModelStore(root, trust_pickle=trust_pickle)
    if not isinstance(origin, dict) or not str(origin.get("url", "")).startswith(S3_SCHEME):
        return ModelStore(root, trust_pickle=trust_pickle)
    return S3ModelStore(origin["url"], trust_pickle=trust_pickle, keep=keep, policy=policy, mirror=root)


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
