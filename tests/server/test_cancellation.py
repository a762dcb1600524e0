"""Requests whose client stopped waiting never reach a batch, on both protocols (a real server):
a REST client that disconnects (fast path and streamed body), a gRPC call past its deadline
(`grpc-timeout`) or cancelled. While one slow batch holds the only worker, the others queue
behind it; once it ends, only the live ones run, and the dropped ones are counted."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from model_store import ModelStore
from tests.fakes import PAUSE_S, PAUSE_VALUE, PausingModel, example_input
from tests.server.conftest import infer_body
from tests.server.grpc.conftest import GrpcServer, serving_grpc

CANCELLED = "modeldock_cancelled_requests_total"
BATCHES = "modeldock_batch_size_count"
CONFIG: dict[str, Any] = {
    "poll_interval": 0.5,
    # one request per batch, one worker: a paused batch holds every request behind it
    "models": {"pause": {"artifact": "state_dict", "max_batch_size": 1, "workers": 1, "inference_timeout_s": 30}},
}
ROW = [[0.1, 0.2, 0.3, 0.4]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    base = tmp_path_factory.mktemp("cancel")
    store = ModelStore(base / "models")
    store.publish(
        "pause", PausingModel(), example_inputs=example_input(), model_factory=PausingModel, formats=("state_dict",)
    )
    with serving_grpc(base, store.root, CONFIG) as running:
        yield running


def hold_the_worker(server: GrpcServer) -> threading.Thread:
    """A request whose batch takes PAUSE_S; returns once it is running."""
    before = server.http.metric("modeldock_queue_wait_seconds_count", model="pause")
    done: list[int] = []

    def call() -> None:
        body = infer_body([[PAUSE_VALUE, 0.0, 0.0, 0.0]])
        done.append(server.http.post("/v2/models/pause/infer", body).status_code)

    thread = threading.Thread(target=call)
    thread.done = done  # type: ignore[attr-defined]
    thread.start()
    deadline = time.monotonic() + 10
    while server.http.metric("modeldock_queue_wait_seconds_count", model="pause") == before:
        assert time.monotonic() < deadline, "the pausing request never reached the worker"
        time.sleep(0.05)
    return thread


def wait_for_count(server: GrpcServer, reason: str, expected: float) -> None:
    deadline = time.monotonic() + 10
    while (got := server.http.metric(CANCELLED, model="pause", reason=reason)) < expected:
        assert time.monotonic() < deadline, f"{reason}: {got} cancelled, expected {expected}"
        time.sleep(0.1)
    assert got == expected


def send_and_leave(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        time.sleep(0.1)  # read by the server and queued before we go


def test_rest_clients_that_disconnect_are_dropped_before_a_batch(server: GrpcServer) -> None:
    http = server.http
    body = requests.models.complexjson.dumps(infer_body(ROW)).encode()
    whole = b"POST /v2/models/pause/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    whole += b"content-length: %d\r\n\r\n%s" % (len(body), body)
    # A streamed (chunked) body takes the ASGI path rather than the fast one.
    chunked = b"POST /v2/models/pause/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    gone_before = http.metric(CANCELLED, model="pause", reason="client_gone")
    batches_before = http.metric(BATCHES, model="pause")
    holder = hold_the_worker(server)
    for request in (whole, whole, whole, chunked):
        send_and_leave(http.port, request)
    holder.join(PAUSE_S + 10)
    assert holder.done == [200]  # type: ignore[attr-defined]
    wait_for_count(server, "client_gone", gone_before + 4)
    answer = http.post("/v2/models/pause/infer", infer_body(ROW))
    assert answer.status_code == 200 and len(answer.json()["outputs"][0]["data"]) == 3
    assert http.metric(BATCHES, model="pause") == batches_before + 2  # the pausing one and the last


def grpc_input() -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array(ROW, dtype=np.float32))
    return [tensor]


def test_grpc_calls_past_their_deadline_or_cancelled_are_dropped(server: GrpcServer) -> None:
    http = server.http
    client = grpcclient.InferenceServerClient(server.grpc_url)
    late_before = http.metric(CANCELLED, model="pause", reason="deadline")
    gone_before = http.metric(CANCELLED, model="pause", reason="client_gone")
    batches_before = http.metric(BATCHES, model="pause")
    holder = hold_the_worker(server)
    for _ in range(3):
        with pytest.raises(InferenceServerException) as e:
            client.infer("pause", grpc_input(), client_timeout=0.3)
        assert "DEADLINE_EXCEEDED" in str(e.value.status())
    answers: list[Any] = []
    context = client.async_infer("pause", grpc_input(), lambda result, error: answers.append(error))
    time.sleep(0.2)
    context.cancel()
    holder.join(PAUSE_S + 10)
    wait_for_count(server, "deadline", late_before + 3)
    wait_for_count(server, "client_gone", gone_before + 1)
    result = client.infer("pause", grpc_input(), client_timeout=10)  # a live one still runs
    assert result.as_numpy("output").shape == (1, 3)  # type: ignore[union-attr]
    assert http.metric(BATCHES, model="pause") == batches_before + 2
    assert answers and answers[0] is not None  # the cancelled call ended with an error
    client.close()
