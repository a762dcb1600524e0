"""A real server on 127.0.0.1 serving a real store: every status, JSON and binary tensors, a
standard v2 client, batches with one bad request, timeouts, overload, limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import FAIL_VALUE, SLEEP_VALUE, FlakyModel, SlowModel, TinyMLP, example_input
from tests.server.conftest import ServerProcess, infer_body

CONFIG = {
    "poll_interval": 0.5,
    "models": {
        "tiny": {"max_batch_size": 8},
        "flaky": {"artifact": "state_dict", "max_batch_size": 8, "batch_timeout_s": 2},
        "slow": {"artifact": "state_dict", "inference_timeout_s": 2, "max_queued_requests": 2},
        "limited": {"max_request_bytes": 2000, "max_rows_per_request": 4},
        "broken": {},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("serving")
    store = ModelStore(base / "models")
    publish_tiny(store, seed=0)
    publish_tiny(store, seed=1)
    publish_tiny(store, name="limited")
    for name, cls in (("flaky", FlakyModel), ("slow", SlowModel)):
        store.publish(name, cls(), example_inputs=example_input(), model_factory=cls, formats=("state_dict",))
    publish_tiny(store, name="broken")
    onnx = store.path("broken", 1) / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")  # same size, wrong sha256
    (base / "cwd").mkdir()
    srv = ServerProcess(store.root, base / "cwd", CONFIG)
    try:
        for name in ("tiny", "flaky", "slow", "limited"):
            srv.wait_until(f"/v2/models/{name}/ready")
        yield srv
    finally:
        srv.stop()


def expected(seed: int, rows: list[list[float]]) -> np.ndarray:
    with torch.no_grad():
        return TinyMLP(seed=seed).eval()(torch.tensor(rows)).numpy()


ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def test_json_infer_answers_with_the_latest_version(server: ServerProcess) -> None:
    r = server.post("/v2/models/tiny/infer", infer_body(ROWS, id="req-1"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "tiny" and doc["model_version"] == "2" and doc["id"] == "req-1"
    [out] = doc["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [2, 3]
    assert np.allclose(np.array(out["data"]).reshape(2, 3), expected(1, ROWS), atol=1e-5)
    assert server.post("/v2/models/tiny/versions/2/infer", infer_body(ROWS)).status_code == 200


def test_binary_tensors_both_ways(server: ServerProcess) -> None:
    arr = np.array(ROWS, np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = server.post(
        "/v2/models/tiny/infer",
        head + arr.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    doc = json.loads(r.content[:n])
    assert doc["model_version"] == "2" and doc["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.allclose(np.frombuffer(r.content[n:], np.float32).reshape(2, 3), expected(1, ROWS), atol=1e-5)


def test_a_standard_v2_client_works_with_its_defaults(server: ServerProcess) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"][0]["shape"] == [-1, 4] and meta["platform"] == "onnx_onnxv1"
    for binary in (True, False):
        inp = httpclient.InferInput("input", [2, 4], "FP32")
        inp.set_data_from_numpy(np.array(ROWS, np.float32), binary_data=binary)
        out = httpclient.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("tiny", [inp], outputs=[out])
        assert np.allclose(result.as_numpy("output"), expected(1, ROWS), atol=1e-5)
        assert result.get_response()["model_version"] == "2"
    client.close()


def test_metadata_and_readiness(server: ServerProcess) -> None:
    meta = server.get("/v2").json()
    assert meta["name"] == "modeldock" and "binary_tensor_data" in meta["extensions"]
    tiny = server.get("/v2/models/tiny").json()
    # The versions a client may request: only 2 is loaded (README, upgrade notes 0.2).
    assert tiny["versions"] == ["2"] and tiny["platform"] == "onnx_onnxv1"
    assert tiny["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert tiny["properties"]["version"] == "2" and tiny["properties"]["device"] == "cpu"
    assert "onnxruntime" in tiny["properties"]["choice"]
    assert server.get("/v2/models/tiny/versions/2").status_code == 200
    assert server.get("/v2/models/tiny/versions/1").status_code == 404
    assert server.get("/v2/models/tiny/versions/2/ready").json() == {"name": "tiny", "ready": True}
    assert server.get("/v2/health/live").json() == {"live": True}
    # A model with no valid version keeps the server up but not ready, and says why.
    ready = server.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["waiting_for"] == ["broken"]
    assert server.get("/v2/models/broken/ready").status_code == 503
    broken = server.get("/v2/models/broken").json()
    assert "sha256 mismatch" in broken["properties"]["reason"] and "1" in broken["properties"]["rejected"]
    r = server.post("/v2/models/broken/infer", infer_body(ROWS))
    assert r.status_code == 503 and "sha256 mismatch" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/tiny/infer", b"{nope", 400, "malformed JSON"),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            400,
            "unknown input 'x'",
        ),
        (
            "/v2/models/tiny/infer",
            infer_body([[1.0, 2.0, 3.0]]),
            400,
            "expected shape [-1, 4], got [1, 3]",
        ),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]},
            400,
            "expected FP32, got INT64",
        ),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2]}]},
            400,
            "has 2 values",
        ),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "input", "shape": [10**12, 64], "datatype": "FP32", "data": [1]}]},
            400,
            "over the limit",
        ),
        ("/v2/models/nosuch/infer", infer_body(ROWS), 404, "unknown model 'nosuch'"),
        (
            "/v2/models/tiny/versions/1/infer",
            infer_body(ROWS),
            404,
            "version 1 of model 'tiny' is not loaded",
        ),
        ("/v2/models/tiny/versions/latest/infer", infer_body(ROWS), 404, "no version 'latest'"),
        (
            "/v2/models/limited/infer",
            infer_body([[0.5] * 4] * 5),
            413,
            "5 rows, over the limit of 4",
        ),
        (
            "/v2/models/limited/infer",
            infer_body([[0.123456789] * 4] * 3, pad="x" * 3000),
            413,
            "over the limit of 2000",
        ),
    ],
)
def test_refusals_name_the_problem(server: ServerProcess, path: str, body: object, status: int, message: str) -> None:
    r = server.post(path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_unknown_routes_and_methods_answer_error_objects(server: ServerProcess) -> None:
    r = server.get("/v2/models/nosuch")
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    r = server.get("/v2/models/tiny/infer")
    assert r.status_code == 405 and "error" in r.json()
    for path in ("/docs", "/openapi.json", "/info"):
        assert server.get(path).status_code == 404


def test_one_bad_request_never_fails_its_batch(server: ServerProcess) -> None:
    """Good, malformed and model-breaking requests in one batch: each gets its own answer.

    `flaky` batches up to 8 rows and waits up to 2 s to fill a batch, so 8 one-row requests sent
    together share one; /metrics proves it (one more batch, of 8 rows) before the answers count.
    """
    good = infer_body([[0.5, 0.5, 0.5, 0.5]])
    bad_dtype = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    failing = infer_body([[FAIL_VALUE, 0, 0, 0]])
    jobs = [good, bad_dtype, good, failing, good, good, failing, good]
    for _ in range(5):  # a round whose requests did not all make one batch proves nothing: retry
        batches = server.metric("modeldock_batch_size_count", model="flaky")
        rows = server.metric("modeldock_batch_size_sum", model="flaky")
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda body: server.post("/v2/models/flaky/infer", body), jobs))
        shared = (
            server.metric("modeldock_batch_size_count", model="flaky") - batches,
            server.metric("modeldock_batch_size_sum", model="flaky") - rows,
        )
        if shared == (1, len(jobs)):
            break
    assert shared == (1, len(jobs)), f"8 requests never shared one batch: (batches, rows) = {shared}"
    codes = [r.status_code for r in results]
    assert codes == [200, 400, 200, 500, 200, 200, 500, 200], [r.text for r in results]
    assert "expected FP32, got FP64" in results[1].json()["error"]
    assert "failed on this input" in results[3].json()["error"]
    for r in (results[i] for i, c in enumerate(codes) if c == 200):
        [out] = r.json()["outputs"]
        assert np.allclose(out["data"], expected(0, [[0.5, 0.5, 0.5, 0.5]]).ravel(), atol=1e-5)


def test_a_hung_predict_answers_504_and_the_worker_comes_back(server: ServerProcess) -> None:
    sleeper = infer_body([[SLEEP_VALUE, 0, 0, 0]])
    with ThreadPoolExecutor(2) as pool:
        hung = [pool.submit(server.post, "/v2/models/slow/infer", sleeper) for _ in range(2)]
        # The queue limit is checked before the body is read: a malformed probe gets 503 once
        # both sleepers are counted, 400 before (and never waits in the queue itself).
        deadline = time.monotonic() + 30
        while server.post("/v2/models/slow/infer", b"{").status_code != 503:
            assert time.monotonic() < deadline, "the two hung requests never filled the queue"
            time.sleep(0.02)
        over = server.post("/v2/models/slow/infer", infer_body(ROWS))
        assert over.status_code == 503 and over.headers["Retry-After"] == "1"
        assert "overloaded" in over.json()["error"]
        for f in hung:
            r = f.result()
            assert r.status_code == 504 and "longer than 2s" in r.json()["error"]
    server.wait_until("/v2/models/slow/ready", timeout=90)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = server.post("/v2/models/slow/infer", infer_body(ROWS))
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text


def test_writes_nothing_into_its_working_directory(server: ServerProcess) -> None:
    assert list(server.workdir.iterdir()) == []  # LitServe would have written client.py here


def test_api_key_guards_all_but_health(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    srv = start_server(store.root, env={"MODELDOCK_API_KEY": "sekrit"})
    srv.wait_until("/v2/health/ready")
    r = srv.post("/v2/models/tiny/infer", infer_body(ROWS))
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert srv.get("/v2/models/tiny").status_code == 401
    assert srv.post("/v2/models/tiny/infer", infer_body(ROWS), headers={"X-API-Key": "sekrit"}).status_code == 200
    assert srv.get("/v2/models/tiny", headers={"Authorization": "Bearer sekrit"}).status_code == 200


def test_start_up_errors_exit_nonzero_with_a_message(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    srv = start_server(tmp_path / "empty")
    assert srv.proc.wait(timeout=60) == 2
    assert "has no models" in srv.log_path.read_text()
    srv = start_server(tmp_path / "empty", config={"models": {"m": {"policy": "newest"}}})
    assert srv.proc.wait(timeout=60) == 2
    assert "version policy 'newest'" in srv.log_path.read_text()


def test_any_loopback_address_can_be_the_listen_address(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    srv = start_server(store.root, env={"MODELDOCK_HOST": "127.0.0.2"})  # LitServe itself takes 3 hosts only
    assert srv.url == f"http://127.0.0.2:{srv.port}"
    srv.wait_until("/v2/health/ready")
    assert srv.post("/v2/models/tiny/infer", infer_body(ROWS)).status_code == 200
    with pytest.raises(requests.ConnectionError):  # bound to that address, not the wildcard
        requests.get(f"http://127.0.0.1:{srv.port}/v2/health/live", timeout=5)


def _raw(server: ServerProcess, data: bytes, until_closed: bool = False, answers: int = 1) -> bytes:
    """Send raw bytes on one connection; read until `answers` complete responses (or EOF)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk
            if not until_closed and _complete(got) >= answers:
                return got


def _complete(data: bytes) -> int:
    count = 0
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        if len(rest) < length:
            break
        count, data = count + 1, rest[length:]
    return count


def _infer_request(rows: list[list[float]], rid: str, extra: str = "") -> bytes:
    body = json.dumps(infer_body(rows, id=rid)).encode()
    head = f"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}"
    return head.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body


def test_pipelined_requests_on_one_connection_are_answered_in_order(server: ServerProcess) -> None:
    # An infer (the fast path), a health check (the ASGI path), another infer, in one write.
    data = _infer_request(ROWS, "first") + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    data += _infer_request(ROWS[:1], "third")
    got = _raw(server, data, answers=3)
    assert got.count(b"HTTP/1.1 200 OK") == 3, got
    assert got.index(b'"id":"first"') < got.index(b"HTTP/1.1 200 OK", 1) < got.index(b'"id":"third"')
    head = got.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-length:" in head and b"x-model-version: 2" in head and b"date:" in head


def test_connection_close_and_http_1_0_are_honoured_on_infer(server: ServerProcess) -> None:
    closing = _raw(server, _infer_request(ROWS, "c", "connection: close\r\n"), until_closed=True)
    assert closing.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in closing.lower()
    old = _raw(server, _infer_request(ROWS, "o").replace(b"HTTP/1.1", b"HTTP/1.0", 1), until_closed=True)
    assert old.startswith(b"HTTP/1.1 200 OK") and b'"id":"o"' in old


def test_a_client_that_leaves_mid_request_costs_nobody_else(server: ServerProcess) -> None:
    import socket

    seen = len(server.log_path.read_text())
    for _ in range(20):  # each leaves before its answer is written
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(_infer_request(ROWS, "gone"))
    r = server.post("/v2/models/tiny/infer", infer_body(ROWS))
    assert r.status_code == 200, r.text
    assert "Traceback" not in server.log_path.read_text()[seen:]


def test_no_response_is_gzipped_so_tritonclient_aio_reads_large_answers(server: ServerProcess) -> None:
    import asyncio

    import tritonclient.http.aio as aioclient

    r = server.get("/v2/models/stats", headers={"Accept-Encoding": "gzip"})
    assert len(r.content) >= 1000, "answers this large used to be gzipped"
    assert "content-encoding" not in r.headers

    async def read() -> tuple[dict[str, object], dict[str, object]]:
        client = aioclient.InferenceServerClient(f"127.0.0.1:{server.port}")  # aiohttp, decompression off
        try:
            return await client.get_inference_statistics(), await client.get_model_metadata("tiny")
        finally:
            await client.close()

    stats, meta = asyncio.run(read())
    assert meta["name"] == "tiny" and {"tiny", "limited"} <= {m["name"] for m in stats["model_stats"]}  # type: ignore[attr-defined]
