"""The gRPC service of a real server, through tritonclient.grpc (sync and aio) and bare stubs:
health, metadata, config, infer (raw and typed contents), versions, statuses, the API key,
statistics and metrics; and that a gRPC and a REST request share a batch."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.fakes import SLEEP_VALUE
from tests.server.conftest import infer_body
from tests.server.grpc.conftest import AUTH, KEY, ROWS, GrpcServer, expected


def client(server: GrpcServer) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(server.grpc_url)


def rows_input(rows: Any, datatype: str = "FP32", name: str = "input") -> tg.InferInput:
    arr = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.int32)
    inp = tg.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def status_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return str(e.value.status()), str(e.value.message())


def test_health_needs_no_key_and_metadata_does(grpc_server: GrpcServer) -> None:
    c = client(grpc_server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("tiny", headers=AUTH) and c.is_model_ready("tiny", "2", headers=AUTH)
    meta = c.get_server_metadata(headers=AUTH)
    assert meta.name == "modeldock" and {"model_configuration", "statistics"} <= set(meta.extensions)
    code, message = status_of(lambda: c.get_server_metadata())
    assert code == "StatusCode.UNAUTHENTICATED" and "API key" in message
    code, _ = status_of(lambda: c.get_model_metadata("tiny", headers={"authorization": "Bearer wrong"}))
    assert code == "StatusCode.UNAUTHENTICATED"
    assert c.get_model_metadata("tiny", headers={"authorization": f"Bearer {KEY}"}).name == "tiny"
    # the standard health service, for Kubernetes' gRPC probe
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"") == b"\x08\x01"  # status: SERVING


def test_model_metadata_and_config_match_rest(grpc_server: GrpcServer) -> None:
    c = client(grpc_server)
    meta = c.get_model_metadata("tiny", headers=AUTH, as_json=True)
    # The versions a client may request, as on REST (only 2 is loaded).
    assert meta["versions"] == grpc_server.http.get("/v2/models/tiny", headers=AUTH).json()["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = c.get_model_config("tiny", headers=AUTH, as_json=True)["config"]
    rest = grpc_server.http.get("/v2/models/tiny/config", headers=AUTH).json()
    assert rest["max_batch_size"] == 8 and int(config["max_batch_size"]) == 8
    assert rest["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == ["4"]
    assert rest["output"][0]["dims"] == [3] and "dynamic_batching" in rest
    assert grpc_server.http.get("/v2/models/tiny/versions/9/config", headers=AUTH).status_code == 404
    code, message = status_of(lambda: c.get_model_config("nope", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message


def test_infer_raw_contents_and_versions(grpc_server: GrpcServer) -> None:
    c = client(grpc_server)
    out = tg.InferRequestedOutput("output")
    latest = c.infer("tiny", [rows_input(ROWS)], outputs=[out], request_id="r-7", headers=AUTH)
    assert latest.get_response().model_version == "2" and latest.get_response().id == "r-7"
    assert np.allclose(latest.as_numpy("output"), expected(1, ROWS), atol=1e-5)
    pinned = c.infer("tiny", [rows_input(ROWS)], model_version="2", headers=AUTH)
    assert pinned.get_response().model_version == "2"
    assert np.allclose(pinned.as_numpy("output"), expected(1, ROWS), atol=1e-5)
    code, message = status_of(lambda: c.infer("tiny", [rows_input(ROWS)], model_version="1", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND" and "version 1 of model 'tiny' is not loaded" in message
    for version in ("9", "x"):
        code, message = status_of(lambda v=version: c.infer("tiny", [rows_input(ROWS)], model_version=v, headers=AUTH))
        assert code == "StatusCode.NOT_FOUND" and f"version {version}" in message.replace("'", "")


def stub(server: GrpcServer) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(server.grpc_url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_in_and_out(grpc_server: GrpcServer) -> None:
    """An Open Inference Protocol client that never uses raw contents gets typed contents back."""
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(np.asarray(ROWS, np.float32).ravel().tolist())
    channel, s = stub(grpc_server)
    with channel:
        response = s.ModelInfer(request, metadata=[("x-api-key", KEY)])
    assert not response.raw_output_contents and response.id == "typed"
    [output] = response.outputs
    assert output.datatype == "FP32" and list(output.shape) == [2, 3]
    got = np.asarray(output.contents.fp32_contents, np.float32).reshape(2, 3)
    assert np.allclose(got, expected(1, ROWS), atol=1e-5)


@pytest.mark.parametrize(
    ("model", "inputs", "code", "message"),
    [
        ("nope", [rows_input(ROWS)], "NOT_FOUND", "unknown model 'nope'"),
        ("tiny", [rows_input([[1, 2, 3, 4]], "INT32")], "INVALID_ARGUMENT", "expected FP32, got INT32"),
        ("tiny", [rows_input([[1.0, 2.0]])], "INVALID_ARGUMENT", "expected shape [-1, 4], got [1, 2]"),
        ("tiny", [rows_input(ROWS, name="x")], "INVALID_ARGUMENT", "unknown input 'x'"),
        ("limited", [rows_input([[0.0] * 4] * 5)], "RESOURCE_EXHAUSTED", "5 rows, over the limit of 4"),
        ("limited", [rows_input([[0.0] * 4] * 200)], "RESOURCE_EXHAUSTED", "over the limit of 2000"),
        ("slow", [rows_input([[SLEEP_VALUE, 0, 0, 0]])], "DEADLINE_EXCEEDED", "longer than 2s"),
    ],
)
def test_refusals_map_to_triton_status_codes(
    grpc_server: GrpcServer, model: str, inputs: list[tg.InferInput], code: str, message: str
) -> None:
    got, text = status_of(lambda: client(grpc_server).infer(model, inputs, headers=AUTH))
    assert got == f"StatusCode.{code}" and message in text, text


def test_calls_not_served_answer_unimplemented(grpc_server: GrpcServer) -> None:
    code, message = status_of(lambda: client(grpc_server).get_model_repository_index(headers=AUTH))
    assert code == "StatusCode.UNIMPLEMENTED" and "RepositoryIndex is not served" in message


def test_infer_without_the_key_is_refused(grpc_server: GrpcServer) -> None:
    code, _ = status_of(lambda: client(grpc_server).infer("tiny", [rows_input(ROWS)]))
    assert code == "StatusCode.UNAUTHENTICATED"


def test_aio_client_concurrent_infers(grpc_server: GrpcServer) -> None:
    async def run() -> list[Any]:
        c = tga.InferenceServerClient(grpc_server.grpc_url)
        try:
            assert await c.is_server_live()
            assert (await c.get_model_metadata("tiny", headers=AUTH)).name == "tiny"
            calls = [c.infer("tiny", [rows_input([row])], headers=AUTH) for row in ROWS * 8]
            return list(await asyncio.gather(*calls))
        finally:
            await c.close()

    results = asyncio.run(run())
    for row, result in zip(ROWS * 8, results, strict=True):
        assert np.allclose(result.as_numpy("output"), expected(1, [row]), atol=1e-5)


def test_a_grpc_and_a_rest_request_share_a_batch(grpc_server: GrpcServer) -> None:
    http = grpc_server.http
    batches = http.metric("modeldock_batch_size_count", model="shared")
    rows = http.metric("modeldock_batch_size_sum", model="shared")
    with ThreadPoolExecutor(2) as pool:
        rest = pool.submit(http.post, "/v2/models/shared/infer", infer_body(ROWS[:1]), headers=AUTH)
        over_grpc = pool.submit(client(grpc_server).infer, "shared", [rows_input(ROWS[1:])], headers=AUTH)
        assert rest.result().status_code == 200 and over_grpc.result().as_numpy("output").shape == (1, 3)
    assert http.metric("modeldock_batch_size_count", model="shared") == batches + 1
    assert http.metric("modeldock_batch_size_sum", model="shared") == rows + 2


def test_statistics_and_metrics_count_grpc_calls(grpc_server: GrpcServer) -> None:
    http, c = grpc_server.http, client(grpc_server)
    rest_before = http.metric("modeldock_requests_total", model="tiny", version="2", code="200")
    grpc_before = http.metric("modeldock_grpc_requests_total", model="tiny", version="2", code="OK")
    stats_before = c.get_inference_statistics("tiny", headers=AUTH).model_stats
    for _ in range(3):
        c.infer("tiny", [rows_input(ROWS)], headers=AUTH)
    # gRPC calls have their own series; the REST series keep their meaning
    assert http.metric("modeldock_grpc_requests_total", model="tiny", version="2", code="OK") == grpc_before + 3
    assert http.metric("modeldock_requests_total", model="tiny", version="2", code="200") == rest_before
    [entry] = [s for s in c.get_inference_statistics("tiny", headers=AUTH).model_stats if s.version == "2"]
    [before] = [s for s in stats_before if s.version == "2"] or [None]
    success_before = before.inference_stats.success.count if before else 0
    assert entry.inference_stats.success.count == success_before + 3
    assert entry.execution_count >= 3 and entry.inference_count >= 6
    assert entry.inference_stats.compute_infer.ns > 0 and entry.inference_stats.queue.count >= 3
    rest = http.get("/v2/models/tiny/stats", headers=AUTH).json()["model_stats"]
    assert [s["inference_stats"]["success"]["count"] for s in rest if s["version"] == "2"] == [
        entry.inference_stats.success.count
    ]
    assert http.get("/v2/models/stats", headers=AUTH).status_code == 200
    assert http.get("/v2/models/tiny/stats").status_code == 401


def test_rest_gzip_and_deflate_bodies_and_unknown_codings(grpc_server: GrpcServer) -> None:
    import gzip
    import zlib

    http = grpc_server.http
    raw = json.dumps(infer_body(ROWS)).encode()
    for coding, data in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        r = requests.post(
            http.url + "/v2/models/tiny/infer", data=data, headers={**AUTH, "content-encoding": coding}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["id"] == ""  # always there: KServe's response model requires it
    r = requests.post(
        http.url + "/v2/models/tiny/infer", data=raw, headers={**AUTH, "content-encoding": "br"}, timeout=30
    )
    assert r.status_code == 415 and "'br'" in r.json()["error"]
    bomb = gzip.compress(b" " * 100_000)  # small on the wire, over `limited`'s 2000 bytes inflated
    r = requests.post(
        http.url + "/v2/models/limited/infer", data=bomb, headers={**AUTH, "content-encoding": "gzip"}, timeout=30
    )
    assert r.status_code == 413 and "inflates to over the limit of 2000" in r.json()["error"]
