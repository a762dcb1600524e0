"""The bucket behind an S3 store: its URL, the boto3 client, listings and object transfers.

In the bucket, a store is the folder layout under a key prefix: `<prefix>/<model>/<n>/<file>`,
plus a small object `<prefix>/<model>/.staging-<n>` per reserved number. This module only talks
to the bucket; the mirror (`s3_mirror`) and publishing (`s3_publish`) decide what to move.
boto3 is imported when a client is first needed, so `import model_store` does not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StoreError
from .store import check_name

S3_SCHEME = "s3://"
VERSION_NAME = re.compile(r"^[1-9][0-9]{0,17}$")  # a version folder's name
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CHUNK = 1 << 20
_GONE = ("PreconditionFailed", "412", "NoSuchKey", "404")

Objects = dict[str, tuple[int, str]]  # a version's files in the bucket: relative path -> (size, ETag)


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith(S3_SCHEME):
        raise StoreError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_NAME.match(bucket):
        raise StoreError(f"{url!r}: {bucket!r} is not a valid bucket name")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise StoreError(f"{url!r}: the key prefix may not have empty, '.' or '..' parts")
    return bucket, prefix


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


def error_code(e: BaseException) -> str:
    """The S3 error code of a boto exception ("NoSuchKey", "PreconditionFailed", or the HTTP status)."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def _is_boto_error(e: BaseException) -> bool:
    return type(e).__module__.startswith(("botocore", "boto3", "s3transfer", "urllib3"))


class ObjectChanged(StoreError):
    """An object was replaced or deleted after the listing: the next look sees its new state."""


class S3Bucket:
    """The objects of one store (`s3://bucket/prefix`) through one lazily made client.

    Every failure to reach the bucket raises StoreError naming the URL and what was being done.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        self.url = url.rstrip("/")
        self.name, self.prefix = parse_url(self.url)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to (the same bucket name elsewhere is another bucket)."""
        return str(getattr(getattr(self.client, "meta", None), "endpoint_url", ""))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @contextlib.contextmanager
    def calls(self, what: str) -> Iterator[None]:
        """Turn boto's exceptions into StoreError naming the store and what was being done."""
        try:
            yield
        except StoreError:
            raise
        except Exception as e:
            if not _is_boto_error(e):
                raise
            raise StoreError(f"{self.url}: {what} failed: {e}") from e

    def pages(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages under a key prefix (grouped by `delimiter` when given)."""
        paginator = self.client.get_paginator("list_objects_v2")
        args = {"Bucket": self.name, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        with self.calls(f"listing {prefix or '/'}"):
            yield from paginator.paginate(**args)

    def models(self) -> list[str]:
        """Model names under the prefix (one delimited listing)."""
        base = self.key() + "/" if self.prefix else ""
        names = set()
        for page in self.pages(base, "/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(base) :].rstrip("/")
                with contextlib.suppress(StoreError):
                    names.add(check_name(name))
        return sorted(names)

    def versions(self, name: str) -> dict[int, Objects]:
        """Every version folder of a model with its objects: one ListObjectsV2 (paginated)."""
        base = self.key(check_name(name)) + "/"
        found: dict[int, Objects] = {}
        for page in self.pages(base):
            for obj in page.get("Contents", []):
                head, _, rest = obj["Key"][len(base) :].partition("/")
                if not VERSION_NAME.match(head):
                    continue  # reservations, stray objects
                files = found.setdefault(int(head), {})
                if rest and not rest.endswith("/"):  # "3/" alone is a console's folder marker
                    files[rest] = (int(obj["Size"]), str(obj["ETag"]))
        return found

    def download(self, key: str, etag: str, size: int, dst: Path) -> None:
        """Fetch one object into `dst`, resuming a partial file of the same ETag; IfMatch pins the content.

        Raises ObjectChanged when the object is no longer the one listed.
        """
        part = dst.with_name(f"{dst.name}.{re.sub(r'[^A-Za-z0-9]', '', etag)[:40]}.part")
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size or size == 0:
            args: dict[str, Any] = {"Bucket": self.name, "Key": key, "IfMatch": etag}
            if have:
                args["Range"] = f"bytes={have}-"
            with self.calls(f"downloading {key}"):
                try:
                    body = self.client.get_object(**args)["Body"]
                except Exception as e:
                    if error_code(e) in _GONE:
                        part.unlink(missing_ok=True)
                        raise ObjectChanged(f"{self.url}: {key} changed since it was listed") from e
                    raise
                with part.open("ab") as f:
                    for chunk in body.iter_chunks(_CHUNK):
                        f.write(chunk)
        if part.stat().st_size != size:
            part.unlink()
            raise ObjectChanged(f"{self.url}: {key} changed while downloading")
        os.replace(part, dst)
