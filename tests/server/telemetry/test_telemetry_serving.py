"""A real server with tracing and the payload log on: spans reach an OTLP collector with the
client's trace id, and each request leaves a JSON line with its tensors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import TinyMLP
from tests.server.conftest import ServerProcess, infer_body, reserve_port

from .collector import Collector, ReceivedSpan

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("telemetry")
    store = ModelStore(base / "models")
    publish_tiny(store, seed=0)
    (base / "cwd").mkdir()
    config = {"tracing": True, "payload_log": str(base / "payload.jsonl"), "payload_log_tensors": "inline"}
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s rather than 5 s
        "MODELDOCK_API_SERVERS": "2",  # spans and log lines from more than one forked process
    }
    holder = reserve_port()  # the gRPC port, reserved as the harness reserves the HTTP one
    env["MODELDOCK_GRPC_PORT"] = str(holder.getsockname()[1])
    srv = ServerProcess(store.root, base / "cwd", config, env)
    try:
        srv.wait_until("/v2/models/tiny/ready")
        yield srv
    finally:
        srv.stop()
        holder.close()


def payload_lines(server: ServerProcess, request_id: str, timeout_s: float = 20) -> list[dict[str, Any]]:
    path = server.workdir.parent / "payload.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            found = [json.loads(line) for line in path.read_text().splitlines()]
            found = [line for line in found if line["id"] == request_id]
            if found:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no payload log line for {request_id!r}")


def with_id(request_id: str) -> Any:
    return lambda s: s.attributes.get("modeldock.request.id") == request_id


def test_a_span_continues_the_clients_trace(server: ServerProcess, collector: Collector) -> None:
    r = server.post(
        "/v2/models/tiny/infer",
        infer_body(ROWS, id="traced-1"),
        headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
    )
    assert r.status_code == 200, r.text
    span: ReceivedSpan = collector.wait_for(with_id("traced-1"))
    assert span.name == "modeldock.infer" and span.trace_id == TRACE_ID and span.parent_span_id == CLIENT_SPAN
    assert span.attributes["modeldock.model"] == "tiny" and span.attributes["modeldock.model.version"] == "1"
    assert span.attributes["http.response.status_code"] == 200 and span.attributes["modeldock.request.rows"] == 2
    assert span.attributes["modeldock.batch.rows"] >= 2 and span.attributes["modeldock.inference_s"] > 0
    assert span.resource["service.name"] == "modeldock"
    assert span.end_ns > span.start_ns


def test_spans_carry_the_rollout_phase_once_read(server: ServerProcess, collector: Collector) -> None:
    # The phase comes from the board, read off the request path: known from the next requests on.
    for i in range(50):
        assert server.post("/v2/models/tiny/infer", infer_body(ROWS, id=f"phase-{i}")).status_code == 200
        span = collector.wait_for(with_id(f"phase-{i}"))
        if "modeldock.rollout.phase" in span.attributes:
            break
        time.sleep(0.1)
    assert span.attributes["modeldock.rollout.phase"] == "stable"  # no rollout in this test's config
    assert "modeldock.rollout.candidate" not in span.attributes


def test_a_refused_request_is_traced_too(server: ServerProcess, collector: Collector) -> None:
    body = infer_body(ROWS, id="refused-1")
    body["inputs"][0]["datatype"] = "NOPE"
    r = server.post("/v2/models/tiny/infer", body, headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert r.status_code == 400
    span = collector.wait_for(lambda s: s.trace_id == TRACE_ID and s.attributes.get("http.response.status_code") == 400)
    assert "NOPE" in span.attributes["modeldock.error"] and span.status_code == 0  # a client error: unset


def test_every_request_leaves_a_payload_line(server: ServerProcess) -> None:
    for i in range(6):  # over both HTTP processes
        r = server.post(
            "/v2/models/tiny/infer",
            infer_body(ROWS, id=f"logged-{i}"),
            headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
        )
        assert r.status_code == 200, r.text
    with torch.no_grad():
        expected = TinyMLP(seed=0).eval()(torch.tensor(ROWS)).numpy()
    for i in range(6):
        [line] = payload_lines(server, f"logged-{i}")
        assert line["model"] == "tiny" and line["version"] == "1" and line["status"] == 200
        assert line["trace_id"] == TRACE_ID and line["protocol"] == "rest"
        [x] = line["inputs"]
        assert x["shape"] == [2, 4] and np.allclose(np.reshape(x["data"], (2, 4)), ROWS)
        [y] = line["outputs"]
        assert y["name"] == "output" and np.allclose(np.reshape(y["data"], (2, 3)), expected, atol=1e-5)
        assert line["infer_s"] > 0 and line["duration_s"] >= line["infer_s"]
    assert server.metric("modeldock_payload_log_records_total") >= 6
    assert server.metric("modeldock_payload_log_dropped_total", reason="queue_full") == 0


def test_the_drop_counter_is_exported_from_the_start(server: ServerProcess) -> None:
    text = server.get("/metrics").text
    for reason in ("queue_full", "too_large", "write_error"):
        assert f'modeldock_payload_log_dropped_total{{reason="{reason}"}}' in text


def test_grpc_calls_are_traced_and_logged_like_rest(server: ServerProcess, collector: Collector) -> None:
    import tritonclient.grpc as grpcclient

    port = server.env["MODELDOCK_GRPC_PORT"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = grpcclient.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    traceparent = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    client.infer("tiny", [tensor], request_id="grpc-1", headers=traceparent)
    [line] = payload_lines(server, "grpc-1")
    assert line["protocol"] == "grpc" and line["status"] == 200 and line["version"] == "1"
    assert line["trace_id"] == TRACE_ID and line["inputs"][0]["shape"] == [2, 4]
    span = collector.wait_for(with_id("grpc-1"))
    assert span.trace_id == TRACE_ID and span.parent_span_id == CLIENT_SPAN
    assert span.attributes["modeldock.protocol"] == "grpc" and span.attributes["modeldock.request.rows"] == 2
    bad = grpcclient.InferInput("nope", [2, 4], "FP32")
    bad.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    with pytest.raises(Exception, match="nope"):
        client.infer("tiny", [bad], request_id="grpc-2")
    [refused] = payload_lines(server, "grpc-2")
    assert refused["protocol"] == "grpc" and refused["status"] == 400 and "nope" in refused["error"]
