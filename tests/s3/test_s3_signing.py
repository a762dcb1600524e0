"""Signed versions in a bucket: the signature uploads before the manifest, the mirror fetches it,
and a version signed later where it lies becomes valid for a server that requires signatures."""

from __future__ import annotations

from pathlib import Path

from model_store import ModelStore
from model_store.signing import SigningKey, TrustPolicy
from tests.conftest import make_keys, publish_tiny
from tests.s3.conftest import Bucket


def test_signed_publish_to_s3_and_the_mirror_checks_it(tmp_path: Path, bucket: Bucket) -> None:
    keys = {"a": make_keys(tmp_path, "a")}
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "publisher")
    v1 = publish_tiny(store, sign=SigningKey.load(keys["a"][0]))
    v2 = publish_tiny(store, seed=1)
    trust = TrustPolicy.from_files([keys["a"][1]])
    server = ModelStore(bucket.url(), cache_dir=tmp_path / "server", trust=trust)
    assert server.versions("tiny") == [v1]
    assert "unsigned" in server.status("tiny", v2).reason
    store.sign("tiny", v2, SigningKey.load(keys["a"][0]))  # signed where it lies, in the bucket
    assert server.versions("tiny") == [v1, v2]


def test_the_mirrors_own_record_is_never_part_of_a_signature() -> None:
    """A mirror folder holds the bucket's record beside the version's files: not the version's."""
    from model_store.s3_mirror import RECORD_NAME
    from model_store.signing import NOT_SIGNED

    assert RECORD_NAME in NOT_SIGNED
