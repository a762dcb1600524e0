"""Data files of a version (labels, vocabularies) and the schema_version rule.

Data files are published with `publish(data_files=...)`, listed in the manifest, checksummed,
waited for while a copy is in progress, mirrored from a bucket like any artifact; a manifest of a
newer schema is rejected with a reason saying so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from model_store import ModelStore, StoreError, VersionState
from model_store.manifest import SCHEMA_PATH, SCHEMA_VERSION, Manifest
from tests.conftest import publish_tiny
from tests.s3.conftest import Bucket, bucket, moto_endpoint  # noqa: F401 (fixtures)

LABELS = json.dumps(["cat", "dog", "bird"]).encode()
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _manifest(folder: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "manifest.json").read_text())


def test_publish_lands_data_files_listed_and_verified(store: ModelStore, tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n")
    v = publish_tiny(store, data_files={"labels.json": LABELS, "vocab.txt": vocab})
    folder = store.path("tiny", v)
    assert (folder / "labels.json").read_bytes() == LABELS
    assert (folder / "vocab.txt").read_text() == "hello\nworld\n"
    m = _manifest(folder)
    jsonschema.validate(m, SCHEMA)
    assert m["schema_version"] == 2
    assert [(f["path"], f["size"]) for f in m["data_files"]] == [("labels.json", len(LABELS)), ("vocab.txt", 12)]
    manifest = Manifest.load(folder)
    entry = manifest.data_file("labels.json")
    assert entry is not None and entry in manifest.files and manifest.data_file("nope.json") is None
    assert store.status("tiny", v).state is VersionState.VALID


def test_a_version_without_data_files_keeps_schema_1(store: ModelStore) -> None:
    """Older releases read 1 only: a version that needs nothing new stays readable by them."""
    v = publish_tiny(store)
    m = _manifest(store.path("tiny", v))
    assert m["schema_version"] == 1 and "data_files" not in m
    jsonschema.validate(m, SCHEMA)


def test_a_changed_data_file_rejects_the_version(store: ModelStore) -> None:
    v = publish_tiny(store, data_files={"labels.json": LABELS})
    (store.path("tiny", v) / "labels.json").write_bytes(LABELS.replace(b"cat", b"cow"))  # same size
    status = store.status("tiny", v)
    assert status.state is VersionState.REJECTED
    assert "labels.json: sha256 mismatch" in status.reason


def test_a_version_is_pending_until_its_data_file_arrives(store: ModelStore, tmp_path: Path) -> None:
    v = publish_tiny(store, data_files={"labels.json": LABELS})
    copy = tmp_path / "copy" / "tiny" / "1"
    shutil.copytree(store.path("tiny", v), copy)
    other = ModelStore(tmp_path / "copy")
    labels = (copy / "labels.json").read_bytes()
    (copy / "labels.json").unlink()
    assert other.status("tiny", 1).state is VersionState.PENDING
    (copy / "labels.json").write_bytes(labels[:5])  # a copy in progress
    assert other.status("tiny", 1).state is VersionState.PENDING
    (copy / "labels.json").write_bytes(labels)
    assert other.status("tiny", 1).state is VersionState.VALID


@pytest.mark.parametrize(
    "data_files, message",
    [
        ({"../labels.json": b"x"}, "must be a plain file name"),
        ({"sub/labels.json": b"x"}, "must be a plain file name"),
        ({".objects.json": b"x"}, "must be a plain file name"),
        ({"model.onnx": b"x"}, "is taken by the version's own files"),
        ({"manifest.json": b"x"}, "is taken by the version's own files"),
        ({"labels.json": 3}, "expected bytes or a path, got int"),
        ({"labels.json": "/no/such/file.json"}, "cannot read /no/such/file.json"),
        (["labels.json"], "data_files must map file names"),
    ],
)
def test_bad_data_files_are_refused_before_anything_lands(store: ModelStore, data_files: object, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        publish_tiny(store, data_files=data_files)
    assert store.version_folders("tiny") == []


def test_a_folder_is_not_a_data_file(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is not a regular file"):
        publish_tiny(store, data_files={"labels.json": tmp_path})


def test_a_newer_schema_is_rejected_saying_so(store: ModelStore) -> None:
    """Not pending forever, not misread: rejected, and the reason says to upgrade."""
    v = publish_tiny(store)
    folder = store.path("tiny", v)
    m = _manifest(folder)
    m["schema_version"] = SCHEMA_VERSION + 1
    m["something_new"] = {"the": "future"}
    (folder / "manifest.json").write_text(json.dumps(m))
    status = store.status("tiny", v)
    assert status.state is VersionState.REJECTED
    assert f"schema_version {SCHEMA_VERSION + 1} is newer than this modeldock understands" in status.reason
    assert "upgrade modeldock" in status.reason
    assert store.versions("tiny") == []
    report = store.verify("tiny", v)
    assert not report.ok and "newer than this modeldock understands" in report.reason


def test_data_files_under_schema_1_are_refused(store: ModelStore) -> None:
    """A release that reads only schema 1 would skip their checksums: such a manifest is not ours."""
    v = publish_tiny(store, data_files={"labels.json": LABELS})
    folder = store.path("tiny", v)
    m = _manifest(folder)
    m["schema_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(m))
    status = store.status("tiny", v)
    assert status.state is not VersionState.VALID
    assert "'data_files' needs schema_version 2" in status.reason


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data_files": {"path": "labels.json"}}, "'data_files' must be a list"),
        ({"data_files": [{"path": "a/b.json", "sha256": "0" * 64, "size": 1}]}, "must be a plain file name"),
        ({"data_files": [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]}, "'model.onnx' is listed twice"),
        ({"schema_version": "2"}, "schema_version '2' is not a positive integer"),
    ],
)
def test_malformed_data_files_in_a_manifest_name_the_problem(store: ModelStore, change: dict, message: str) -> None:  # type: ignore[type-arg]
    v = publish_tiny(store, data_files={"labels.json": LABELS})
    folder = store.path("tiny", v)
    (folder / "manifest.json").write_text(json.dumps(_manifest(folder) | change))
    status = store.status("tiny", v)
    assert status.state is not VersionState.VALID and message in status.reason


def test_the_first_release_manifest_still_parses() -> None:
    """tests/data/compat holds a store of the first release; its manifest reads as before."""
    folder = Path(__file__).resolve().parents[1] / "data" / "compat" / "store" / "tiny" / "1"
    manifest = Manifest.load(folder)
    assert manifest.schema_version == 1 and manifest.data_files == ()
    assert [f.path for f in manifest.files] == [a.path for a in manifest.artifacts] + ["examples.npz"]
    assert ModelStore(folder.parents[1]).status("tiny", 1).state is VersionState.VALID


def test_data_files_travel_through_a_bucket(bucket: Bucket, tmp_path: Path) -> None:  # noqa: F811
    """Uploaded with the version, waited for, mirrored, checksummed: like any artifact."""
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "cache")
    v = publish_tiny(store, data_files={"labels.json": LABELS})
    assert bucket.read(f"models/tiny/{v}/labels.json") == LABELS
    # A reader with its own mirror downloads it.
    reader = ModelStore(bucket.url(), cache_dir=tmp_path / "reader")
    assert reader.versions("tiny") == [v]
    assert (reader.path("tiny", v) / "labels.json").read_bytes() == LABELS
    # Pending while the data file is missing from the bucket; rejected when it is tampered with.
    bucket.delete(f"models/tiny/{v}/labels.json")
    assert reader.statuses("tiny")[0].state is VersionState.PENDING
    bucket.write(f"models/tiny/{v}/labels.json", LABELS.replace(b"cat", b"cow"))
    status = reader.statuses("tiny")[0]
    assert status.state is VersionState.REJECTED and "labels.json: sha256 mismatch" in status.reason
