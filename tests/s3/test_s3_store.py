"""`ModelStore("s3://...")` against a real S3-compatible server: publish, list, verify, resolve, the mirror."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from model_store import ModelStore, S3ModelStore, StoreError, VersionPolicy, VersionState
from model_store.s3_mirror import Retention
from tests.conftest import publish_tiny
from tests.s3.conftest import Bucket, TcpProxy

FAST = {"formats": ("state_dict",)}  # the quickest format to export and verify


class Calls:
    """Every S3 operation a client makes, by name (botocore's event hooks)."""

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        self.params: list[dict[str, Any]] = []
        client.meta.events.register("provide-client-params.s3", self._on)

    def _on(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.names.append(model.name)
        self.params.append({"op": model.name, **params})

    def count(self, name: str) -> int:
        return self.names.count(name)

    def clear(self) -> None:
        self.names.clear()
        self.params.clear()


def clone(
    bucket: Bucket,
    src: int,
    dst: int,
    *,
    manifest: bool = True,
    skip: tuple[str, ...] = (),
    mutate: dict[str, Callable[[bytes], bytes]] | None = None,
    prefix: str = "models/tiny",
) -> None:
    """Copy a version's objects under another number, files first, then its manifest (number fixed)."""
    for key in sorted(bucket.objects(f"{prefix}/{src}/")):
        rel = key[len(f"{prefix}/{src}/") :]
        if rel == "manifest.json" or rel in skip:
            continue
        data = bucket.read(key)
        if mutate and rel in mutate:
            data = mutate[rel](data)
        bucket.write(f"{prefix}/{dst}/{rel}", data)
    if manifest:
        m = json.loads(bucket.read(f"{prefix}/{src}/manifest.json"))
        m["version"] = dst
        bucket.write(f"{prefix}/{dst}/manifest.json", json.dumps(m).encode())


def flip(data: bytes) -> bytes:
    """Same size, different bytes."""
    b = bytearray(data)
    b[-50] ^= 0xFF
    return bytes(b)


def test_publish_list_verify_resolve(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    assert isinstance(store, S3ModelStore) and repr(store) == f"ModelStore('{bucket.url()}')"
    calls = Calls(store.client)
    assert publish_tiny(store, seed=0, metrics={"val_acc": 0.9}) == 1
    assert publish_tiny(store, seed=1, metrics={"val_acc": 0.8}) == 2

    # Reservation first, files next, the manifest last (and conditionally, like the reservation).
    puts = [p for p in calls.params if p["op"] in ("PutObject", "CreateMultipartUpload")]
    for v in (1, 2):
        mine = [p for p in puts if p["Key"].startswith((f"models/tiny/{v}/", f"models/tiny/.staging-{v}"))]
        assert mine[0]["Key"] == f"models/tiny/.staging-{v}" and mine[0]["IfNoneMatch"] == "*"
        assert mine[-1]["Key"] == f"models/tiny/{v}/manifest.json" and mine[-1]["IfNoneMatch"] == "*"
        assert len(mine) == 6  # reservation, 3 artifacts, examples, manifest
    assert {k for k in bucket.objects() if "/1/" in k} == {
        f"models/tiny/1/{f}"
        for f in ("manifest.json", "model.onnx", "model.torchscript.pt", "model.state_dict.pt", "examples.npz")
    }

    assert store.models() == ["tiny"]
    assert store.versions("tiny") == [1, 2]
    report = store.verify("tiny", 1)
    assert report.ok and set(report.servable) == {"onnx", "torchscript", "state_dict"}
    assert store.resolve("tiny") == 2
    assert store.resolve("tiny", "best:val_acc") == 1
    assert store.resolve("tiny", "pinned:1") == 1
    assert store.manifest("tiny", 2)["metrics"] == {"val_acc": 0.8}
    assert calls.count("GetObject") == 2  # the reservations read back: what was published is not downloaded

    # Another machine: a fresh cache downloads the versions into its mirror.
    other = ModelStore(bucket.url(), cache_dir=tmp_path / "other")
    assert other.versions("tiny") == [1, 2]
    mirror = tmp_path / "other" / "s3" / bucket.name / "models" / "tiny"
    assert (mirror / "2" / "model.onnx").is_file() and not list(mirror.glob(".download-*"))
    assert other.path("tiny", 2) == mirror / "2"
    with pytest.raises(StoreError, match="no valid version"):
        other.resolve("tiny", "pinned:3")


def _reserve_some(url: str, cache: str, n: int) -> list[int]:
    store = S3ModelStore(url, cache_dir=cache)
    return [store.reserve("tiny") for _ in range(n)]


def _publish_two(url: str, cache: str) -> list[int]:
    store = ModelStore(url, cache_dir=cache)
    return [publish_tiny(store, seed=i, **FAST) for i in range(2)]  # type: ignore[arg-type]


def test_concurrent_publishers_get_distinct_numbers(bucket: Bucket, tmp_path: Path) -> None:
    url = bucket.url()
    # Reservations alone, from threads hammering the same numbers.
    results: list[list[int]] = [[] for _ in range(6)]

    def work(i: int) -> None:
        results[i] = _reserve_some(url, str(tmp_path / f"c{i}"), 4)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    numbers = sorted(n for r in results for n in r)
    assert numbers == list(range(1, 25))

    # Whole publishes from two processes.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        published = pool.starmap(_publish_two, [(url, str(tmp_path / "p0")), (url, str(tmp_path / "p1"))])
    landed = sorted(published[0] + published[1])
    assert landed == [25, 26, 27, 28]
    assert ModelStore(url, cache_dir=tmp_path / "check").versions("tiny") == landed


def test_numbers_are_never_reused(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    for seed in range(2):
        publish_tiny(store, seed=seed, **FAST)  # type: ignore[arg-type]
    bucket.delete("models/tiny/2/")  # the reservation stays: 2 is used
    bucket.write("models/tiny/.staging-5", b"someone else's")
    bucket.write("models/tiny/7/README", b"a copy that took no reservation")
    assert publish_tiny(store, **FAST) == 8  # type: ignore[arg-type]
    assert store.versions("tiny") == [1, 8]
    assert store.status("tiny", 7).reason.endswith("no manifest")


def test_a_half_uploaded_version_is_pending_until_complete(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    publish_tiny(store, **FAST)  # type: ignore[arg-type]
    clone(bucket, 1, 2, manifest=False)  # objects, no manifest
    assert [s.state for s in store.statuses("tiny")] == [VersionState.VALID, VersionState.PENDING]
    assert "no manifest" in store.status("tiny", 2).reason

    bucket.delete("models/tiny/2/")
    clone(bucket, 1, 2, skip=("model.state_dict.pt",))  # a manifest listing an object not yet uploaded
    status = store.statuses("tiny")[1]
    assert status.state is VersionState.PENDING and "arriving" in status.reason
    mirrored = {p.name for p in store.path("tiny", 2).iterdir()}
    assert mirrored == {"manifest.json", ".objects.json"}  # nothing else is fetched for a pending version

    key = "models/tiny/2/model.state_dict.pt"
    bucket.write(key, bucket.read("models/tiny/1/model.state_dict.pt")[:-10])  # wrong size: still pending
    assert store.versions("tiny") == [1]
    bucket.write(key, bucket.read("models/tiny/1/model.state_dict.pt"))
    assert store.versions("tiny") == [1, 2]


def test_a_tampered_object_is_rejected_and_only_changes_are_downloaded(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    publish_tiny(store, seed=0)
    publish_tiny(store, seed=1)
    reader = ModelStore(bucket.url(), cache_dir=tmp_path / "reader")
    assert reader.versions("tiny") == [1, 2]
    calls = Calls(reader.client)

    # A look at an unchanged bucket: one listing, no download.
    assert reader.versions("tiny") == [1, 2]
    assert calls.names == ["ListObjectsV2"]

    key = "models/tiny/2/model.torchscript.pt"
    original = bucket.read(key)
    bucket.write(key, flip(original))
    calls.clear()
    status = reader.statuses("tiny")[1]
    assert status.state is VersionState.REJECTED and "model.torchscript.pt: sha256 mismatch" in status.reason
    assert [p.get("Key") for p in calls.params if p["op"] == "GetObject"] == [key]  # just the changed object
    calls.clear()
    assert reader.statuses("tiny")[1] is status  # unchanged since: not examined again
    assert calls.names == ["ListObjectsV2"]

    bucket.write(key, original)
    assert reader.versions("tiny") == [1, 2]


def test_the_mirror_is_bounded_and_follows_deletes(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    for seed, acc in enumerate((0.9, 0.7, 0.8, 0.6)):
        publish_tiny(store, seed=seed, metrics={"val_acc": acc}, **FAST)  # type: ignore[arg-type]
    clone(bucket, 4, 5, mutate={"model.state_dict.pt": flip})  # newest, rejected

    server = S3ModelStore(bucket.url(), cache_dir=tmp_path / "server", keep=2)
    states = {s.version: s.state for s in server.statuses("tiny")}
    assert states == {
        1: VersionState.PENDING,
        2: VersionState.PENDING,
        3: VersionState.VALID,
        4: VersionState.VALID,
        5: VersionState.REJECTED,
    }
    assert "not mirrored" in server.status("tiny", 1).reason

    def files(v: int) -> set[str]:
        return {p.name for p in server.path("tiny", v).iterdir() if not p.name.startswith(".")}

    assert files(1) == files(2) == {"manifest.json"}  # beyond the rule: the manifest only
    assert "model.state_dict.pt" in files(4) and "model.state_dict.pt" in files(5)

    bucket.delete("models/tiny/4/")  # the served version goes: its fallback is here, the next one comes
    assert server.versions("tiny") == [2, 3]
    assert not server.path("tiny", 4).exists()
    assert "model.state_dict.pt" in files(2) and files(1) == {"manifest.json"}

    best = S3ModelStore(bucket.url(), cache_dir=tmp_path / "best", keep=1, policy="best:val_acc")
    assert best.versions("tiny") == [1]
    assert best.status("tiny", 5).state is VersionState.REJECTED  # the newest is always looked at
    assert "not mirrored" in best.status("tiny", 3).reason
    assert best.resolve("tiny", "best:val_acc") == 1
    assert best.resolve("tiny", "pinned:3") == 3  # another policy mirrors what it needs
    assert best.verify("tiny", 2).ok  # an explicit verify fetches the version


def test_each_model_keeps_what_its_retention_says(bucket: Bucket, tmp_path: Path) -> None:
    publisher = ModelStore(bucket.url(), cache_dir=tmp_path / "publisher")
    for seed, acc in enumerate((0.9, 0.7, 0.8)):
        for name in ("a", "b"):
            publish_tiny(publisher, name, seed=seed, metrics={"val_acc": acc}, **FAST)  # type: ignore[arg-type]

    # One store for every model (as a server's supervisor holds it), one retention per model.
    store = S3ModelStore(bucket.url(), cache_dir=tmp_path / "server", keep=2)
    store.retain("a", keep=1, policy="best:val_acc")
    latest = VersionPolicy.parse("latest")
    assert store.retention("b") == Retention(2, latest)  # the store-wide values
    assert {s.version: s.state for s in store.statuses("a")} == {
        1: VersionState.VALID,  # the best
        2: VersionState.PENDING,
        3: VersionState.VALID,  # the newest is always looked at
    }
    assert "keeps up to 1 servable version(s) that policy best:val_acc prefers" in store.status("a", 2).reason
    assert {s.version: s.state for s in store.statuses("b")} == {
        1: VersionState.PENDING,
        2: VersionState.VALID,
        3: VersionState.VALID,
    }
    assert "keeps up to 2 servable version(s) that policy latest prefers" in store.status("b", 1).reason

    # A worker is handed the mirror's path: a plain folder store sees what the supervisor synced.
    worker = ModelStore(store.init_mirror())
    assert type(worker) is ModelStore
    assert worker.versions("a") == [1, 3] and worker.versions("b") == [2, 3]
    assert worker.resolve("a", "best:val_acc") == 1

    # A new retention applies at the next look; what is left out is the store's.
    store.retain("a", keep=None)
    assert store.retention("a") == Retention(None, latest)
    assert store.versions("a") == [1, 2, 3]
    assert worker.versions("a") == [1, 2, 3]
    store.retain("b", keep=1)
    assert store.versions("b") == [3]
    assert worker.versions("b") == [3]

    # Bad values are errors naming the problem and change nothing.
    with pytest.raises(StoreError, match="keep must be an integer of at least 1"):
        store.retain("b", keep=0)
    with pytest.raises(ValueError, match="version policy 'newest'"):
        store.retain("b", policy="newest")
    with pytest.raises(StoreError, match="model name"):
        store.retain("../b", keep=1)
    assert store.retention("b") == Retention(1, latest)


def test_an_interrupted_download_resumes_where_it_stopped(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    publish_tiny(store)
    reader = S3ModelStore(bucket.url(), cache_dir=tmp_path / "reader")
    calls = Calls(reader.client)
    gets = 0

    def fail_third_get(**_: Any) -> None:
        nonlocal gets
        gets += 1
        if gets == 3:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=bucket.endpoint)

    reader.client.meta.events.register("before-call.s3.GetObject", fail_third_get)
    with pytest.raises(StoreError, match="downloading"):
        reader.statuses("tiny")
    reader.client.meta.events.unregister("before-call.s3.GetObject", fail_third_get)
    # The partial download is never looked at: the version folder holds the manifest alone.
    assert reader.status("tiny", 1).state is VersionState.PENDING
    assert (reader.root / "tiny" / ".download-1").is_dir()

    calls.clear()
    assert reader.versions("tiny") == [1]
    assert calls.count("GetObject") == 3  # 5 files, of which the manifest and one were already here
    assert not (reader.root / "tiny" / ".download-1").exists()


def test_an_unreachable_bucket_raises_and_leaves_the_mirror(
    bucket: Bucket, proxy: TcpProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_tiny(ModelStore(bucket.url(), cache_dir=tmp_path / "cache"), **FAST)  # type: ignore[arg-type]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    reader = ModelStore(bucket.url(), cache_dir=tmp_path / "reader")
    assert reader.versions("tiny") == [1]
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"{bucket.url()}: listing models/tiny/ failed"):
        reader.versions("tiny")
    assert time.monotonic() - started < 10
    assert reader.status("tiny", 1).state is VersionState.VALID  # the mirror is as it was
    proxy.restore()
    assert reader.versions("tiny") == [1]


def test_bad_urls_and_missing_buckets_are_store_errors(bucket: Bucket, tmp_path: Path) -> None:
    for url in ("s3://", "s3://UPPER/models", "s3://ok-bucket/a//b", "s3://ok-bucket/../x"):
        with pytest.raises(StoreError):
            ModelStore(url, cache_dir=tmp_path)
    missing = ModelStore(f"s3://{bucket.name}-missing/models", cache_dir=tmp_path)
    with pytest.raises(StoreError, match="NoSuchBucket"):
        missing.models()
    with pytest.raises(StoreError, match="NoSuchBucket"):
        missing.versions("tiny")
    assert not (tmp_path / "s3").exists()  # nothing is written for a store that was never read
    assert ModelStore(bucket.url(""), cache_dir=tmp_path).models() == []


def test_a_version_whose_paths_cannot_be_files_is_rejected_not_fatal(bucket: Bucket, tmp_path: Path) -> None:
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    publish_tiny(store, **FAST)  # type: ignore[arg-type]
    # v2 lists "model.state_dict.pt" and "model.state_dict.pt/examples.npz": both objects exist in a
    # bucket, but no folder can hold a file and a directory of the same name.
    clone(bucket, 1, 2, manifest=False)
    bucket.write("models/tiny/2/model.state_dict.pt/examples.npz", bucket.read("models/tiny/1/examples.npz"))
    m = json.loads(bucket.read("models/tiny/1/manifest.json"))
    m["version"], m["examples"]["path"] = 2, "model.state_dict.pt/examples.npz"
    bucket.write("models/tiny/2/manifest.json", json.dumps(m).encode())
    status = store.statuses("tiny")[1]
    assert status.state is VersionState.REJECTED and "cannot be mirrored" in status.reason
    assert store.versions("tiny") == [1]
