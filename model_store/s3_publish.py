"""Publishing a version to a bucket: claim a number, upload every file, the manifest last.

A number is claimed with a conditional put (`If-None-Match: *`) of `<model>/.staging-<n>`; the
reservation stays after the version lands, so a number is never reused, even after its version
is deleted. The version is built and checked locally exactly as for a folder store.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from . import publish as _publish
from .errors import StoreError
from .manifest import MANIFEST_NAME
from .s3_bucket import VERSION_NAME, Objects, S3Bucket, error_code
from .signing import SIGNATURE_NAME, SigningKey, sign_folder
from .store import STAGING_PREFIX, check_name
from .verify import HashCache

# Called with what was just uploaded (model, number, local copy, objects) while the copy exists.
Uploaded = Callable[[str, int, Path, Objects], None]

_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def taken(bucket: S3Bucket, name: str) -> set[int]:
    """Numbers in use: version folders and reservations, valid or not."""
    base = bucket.key(name) + "/"
    found: set[int] = set()
    for page in bucket.pages(base, "/"):
        for cp in page.get("CommonPrefixes", []):
            head = cp["Prefix"][len(base) :].rstrip("/")
            if VERSION_NAME.match(head):
                found.add(int(head))
        for obj in page.get("Contents", []):
            tail = obj["Key"][len(base) :]
            if tail.startswith(STAGING_PREFIX) and VERSION_NAME.match(tail[len(STAGING_PREFIX) :]):
                found.add(int(tail[len(STAGING_PREFIX) :]))
    return found


def reserve(bucket: S3Bucket, name: str) -> int:
    """Claim the next number of a model with a conditional put of `.staging-<n>`.

    The reservation's body is a random token read back after the put, a second line for servers
    that ignore the condition: a publisher that finds another's token moves on.
    """
    check_name(name)
    for _ in range(100):
        version = max(taken(bucket, name), default=0) + 1
        key = bucket.key(name, f"{STAGING_PREFIX}{version}")
        token = uuid.uuid4().hex.encode()
        try:
            with bucket.calls(f"reserving {key}"):
                bucket.client.put_object(Bucket=bucket.name, Key=key, Body=token, IfNoneMatch="*")
        except StoreError as e:
            if error_code(e.__cause__ or e) in _TAKEN:
                continue  # another publisher claimed it first
            raise
        with bucket.calls(f"reading back {key}"):
            if bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read() != token:
                continue
        if any(page.get("KeyCount", 0) for page in bucket.pages(bucket.key(name, str(version)) + "/")):
            continue  # a copy that took no reservation landed there meanwhile
        return version
    raise StoreError(f"{bucket.url}: could not reserve a version number for {name!r}")


def _upload(bucket: S3Bucket, path: Path, key: str, *, last: bool = False) -> tuple[int, str]:
    """Upload one file; returns its (size, ETag) as the bucket now lists it."""
    client = bucket.client
    with bucket.calls(f"uploading {key}"):
        if last:
            # The manifest: conditional, so a version's manifest is written once.
            etag = client.put_object(Bucket=bucket.name, Key=key, Body=path.read_bytes(), IfNoneMatch="*")["ETag"]
            return path.stat().st_size, str(etag)
        client.upload_file(str(path), bucket.name, key)  # multipart for large files
        head = client.head_object(Bucket=bucket.name, Key=key)
        return int(head["ContentLength"]), str(head["ETag"])


def upload_signature(bucket: S3Bucket, name: str, version: int, path: Path) -> None:
    """Put a version's signature (`modeldock sign` of a version already in the bucket)."""
    _upload(bucket, path, bucket.key(name, str(version), SIGNATURE_NAME))


def land(
    bucket: S3Bucket,
    name: str,
    plan: _publish.Plan,
    hashes: HashCache,
    uploaded: Uploaded,
    sign: SigningKey | None = None,
) -> int:
    """Reserve a number, build the version locally, upload its files and then its manifest.

    `uploaded` gets the local copy once the manifest is in (the mirror adopts it rather than
    downloading it back); an OSError there does not fail the publish.
    """
    version = reserve(bucket, name)
    with tempfile.TemporaryDirectory(prefix="modeldock-publish-") as tmp:
        staging = Path(tmp) / "version"
        staging.mkdir()
        manifest = _publish.build(plan, name, version, staging, hashes)
        manifest.dump(staging)
        signed = [SIGNATURE_NAME] if sign is not None else []
        if sign is not None:
            sign_folder(staging, sign, f"{name}/{version}", hashes)
        done: Objects = {}
        try:
            # The signature before the manifest: a mirror never sees the version unsigned.
            for rel in [*(entry.path for entry in manifest.files), *signed]:
                done[rel] = _upload(bucket, staging / rel, bucket.key(name, str(version), rel))
            key = bucket.key(name, str(version), MANIFEST_NAME)
            done[MANIFEST_NAME] = _upload(bucket, staging / MANIFEST_NAME, key, last=True)
        except BaseException:
            # Leave no half version behind (the reservation keeps the number used).
            with contextlib.suppress(Exception):
                for rel in done:
                    bucket.client.delete_object(Bucket=bucket.name, Key=bucket.key(name, str(version), rel))
            raise
        with contextlib.suppress(OSError):
            uploaded(name, version, staging, done)
    return version
