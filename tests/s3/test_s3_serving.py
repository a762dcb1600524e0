"""`modeldock serve --store s3://...` under load: hot swaps, half uploads, tampering, rollback, outages.

Every response is counted: zero failed requests, and no refused or incomplete version ever answers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.s3.conftest import Bucket, TcpProxy, env_for
from tests.s3.test_s3_store import clone, flip
from tests.server.conftest import Load, ServerProcess, infer_body
from tests.server.test_hot_reload import wait_for

ROWS = [[0.1, 0.2, 0.3, 0.4]]


POLL_S = 0.5


def config(workers: int) -> dict[str, Any]:
    return {"poll_interval": POLL_S, "models": {"tiny": {"max_batch_size": 8, "workers": workers}}}


def metadata(server: ServerProcess) -> dict[str, Any]:
    result: dict[str, Any] = server.get("/v2/models/tiny").json()
    return result


def only(load: Load, version: str, last: int = 40) -> bool:
    """The last `last` answers all came from `version` (every worker has moved)."""
    n = load.count()
    return n >= last and load.versions_since(n - last) == {version}


def test_serves_from_a_bucket_and_swaps_versions_under_load(bucket: Bucket, tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "publisher")
    publish_tiny(store, seed=0)
    # Two workers: two processes sync one mirror (a lock keeps them from tripping over each other).
    server: ServerProcess = start_server(bucket.url(), config(workers=2), env_for(bucket))
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=4, max_requests=20_000, max_s=90)
    try:
        wait_for(lambda: load.versions_since(0) == {"1"}, "v1 answers")

        # v1 -> v2: published to the bucket, answering within seconds.
        publish_tiny(store, seed=1)
        published = time.monotonic()
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "v2 answers", timeout=20)
        landed = time.monotonic() - published

        # 3: objects without a manifest; 4: a tampered object (same size, other bytes).
        clone(bucket, 2, 3, manifest=False)
        clone(bucket, 2, 4, mutate={"model.onnx": flip})
        wait_for(lambda: "4" in metadata(server)["properties"]["rejected"], "4 rejected")
        assert "model.onnx: sha256 mismatch" in metadata(server)["properties"]["rejected"]["4"]
        # 3 again, now with a manifest that lists an object not uploaded yet: still pending.
        bucket.delete("models/tiny/3/")
        clone(bucket, 2, 3, skip=("model.onnx",))
        # 5, tampered, uploaded after that: the poll that rejects it listed the incomplete 3 too.
        clone(bucket, 2, 5, mutate={"model.onnx": flip})
        wait_for(lambda: "5" in metadata(server)["properties"]["rejected"], "5 rejected")
        assert "3" not in load.versions_since(mark) and "3" not in metadata(server)["versions"]
        bucket.write("models/tiny/3/model.onnx", bucket.read("models/tiny/2/model.onnx"))
        mark = load.count()
        wait_for(lambda: "3" in load.versions_since(mark), "v3 answers once complete")

        # Deleting the version in service from the bucket rolls back to the next valid one.
        bucket.delete("models/tiny/3/")
        wait_for(lambda: only(load, "2"), "rollback to v2 in every worker")
        mark = load.count()
        wait_for(lambda: load.count() > mark + 20, "load after rollback")
        assert load.versions_since(mark) == {"2"}
    finally:
        load.stop()

    assert {code for code, _ in load.results} == {200}, [r for r in load.results if r[0] != 200][:5]
    assert not load.errors
    assert load.versions_since(0) == {"1", "2", "3"}  # never the tampered 4 or 5
    print(f"v2 answered {landed:.2f}s after publish returned; {len(load.results)} requests, all 200")

    mirror = server.cache / "s3" / bucket.name / "models" / "tiny"
    assert sorted(p.name for p in mirror.iterdir() if not p.name.startswith(".")) == ["1", "2", "4", "5"]


def test_an_unreachable_bucket_keeps_the_served_version_and_recovers(
    bucket: Bucket, proxy: TcpProxy, tmp_path: Path, start_server
) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(bucket.url(), cache_dir=tmp_path / "publisher")
    publish_tiny(store, seed=0)
    # The server reaches the bucket through a proxy that the test can cut; the publisher does not.
    server: ServerProcess = start_server(bucket.url(), config(workers=1), env_for(bucket, proxy.endpoint))
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=2, max_requests=20_000, max_s=90)
    try:
        wait_for(lambda: load.versions_since(0) == {"1"}, "v1 answers")
        proxy.cut()
        cut_at = time.monotonic()
        publish_tiny(store, seed=1)  # lands in the bucket while the server cannot see it
        wait_for(lambda: "store poll failing" in metadata(server)["properties"].get("reason", ""), "outage shown")
        # The outage lasts 8 poll intervals (the log's recovery line counts the failed polls),
        # and the server keeps answering, with v1 and ready, all along.
        while time.monotonic() - cut_at < 8 * POLL_S:
            mark = load.count()
            wait_for(lambda m=mark: load.count() > m + 5, "serving during the outage")
            assert server.get("/v2/health/ready").status_code == 200
        assert load.versions_since(0) == {"1"}

        proxy.restore()
        restored = time.monotonic()
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "v2 after the bucket returns", timeout=20)
        recovered = time.monotonic() - restored
    finally:
        load.stop()

    assert {code for code, _ in load.results} == {200}, [r for r in load.results if r[0] != 200][:5]
    assert not load.errors
    log = server.log_path.read_text()
    # Rate-limited: one report for the whole outage (not one per 0.5 s poll), then the recovery.
    assert log.count("store poll failed") == 1, log[-3000:]
    failed_polls = re.search(r"store readable again after (\d+) failed poll", log)
    assert failed_polls and int(failed_polls[1]) >= 3, log[-3000:]
    print(f"outage {restored - cut_at:.1f}s; v2 answered {recovered:.2f}s after the bucket returned")
