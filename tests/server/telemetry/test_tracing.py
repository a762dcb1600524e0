"""Tracing in-process: the observer turns RequestEvents into spans (the SDK's in-memory exporter)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from server.config import ConfigError, ServerConfig
from server.telemetry import build_observers
from server.telemetry.phase import PolledPhase
from server.telemetry.tracing import SPAN_NAME, Tracing

from .collector import Collector
from .events import PARENT_ID, TRACE_ID, TRACEPARENT, event

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter, **kw: object) -> Tracing:
    return Tracing(lambda: SimpleSpanProcessor(exporter), **kw)  # type: ignore[arg-type]


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


def test_a_span_per_request_continues_the_clients_trace(exporter: InMemorySpanExporter) -> None:
    e = event(headers={"traceparent": TRACEPARENT})
    traced(exporter)(e)
    span = only_span(exporter)
    assert span.name == SPAN_NAME and span.kind == SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID and f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.parent.is_remote
    attrs = dict(span.attributes or {})
    assert attrs["modeldock.model"] == "tiny" and attrs["modeldock.model.version"] == "2"
    assert attrs["modeldock.protocol"] == "rest" and attrs["http.response.status_code"] == 200
    assert attrs["modeldock.batch.rows"] == 8 and attrs["modeldock.request.rows"] == 2
    assert attrs["modeldock.queue_wait_s"] == 0.002 and attrs["modeldock.inference_s"] == 0.001
    assert attrs["modeldock.request.id"] == "req-7"
    # The span covers the request as the handler timed it, not when the observer ran.
    assert span.start_time == e.started_ns and span.end_time == e.started_ns + 4_000_000
    assert span.status.status_code == StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "modeldock"


def test_without_traceparent_the_span_starts_a_trace(exporter: InMemorySpanExporter) -> None:
    tracing = traced(exporter)
    tracing(event())
    tracing(event())
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context is not None and second.context is not None
    assert first.context.trace_id != second.context.trace_id


def test_a_client_that_does_not_sample_gets_no_span(exporter: InMemorySpanExporter) -> None:
    traced(exporter)(event(headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}))
    assert exporter.get_finished_spans() == ()


def test_a_malformed_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    traced(exporter)(event(headers={"traceparent": "00-not-a-trace-01"}))
    span = only_span(exporter)
    assert span.parent is None and span.context is not None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_server_errors_mark_the_span_client_errors_do_not(exporter: InMemorySpanExporter) -> None:
    tracing = traced(exporter)
    tracing(event(status=503, batch_rows=0, queue_s=0.0))
    tracing(event(status=400, request=None, batch_rows=0))
    failed, refused = exporter.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR and failed.status.description == "something went wrong"
    assert dict(failed.attributes or {})["error.type"] == "503"
    assert refused.status.status_code == StatusCode.UNSET
    attrs = dict(refused.attributes or {})
    assert attrs["http.response.status_code"] == 400 and attrs["modeldock.error"] == "something went wrong"
    assert "modeldock.request.rows" not in attrs  # the request was never decoded


def test_the_rollout_phase_is_on_the_span_once_known(exporter: InMemorySpanExporter) -> None:
    reads: list[str] = []

    def board(model: str) -> tuple[str, int | None]:
        reads.append(model)
        return ("canary", 3)

    phase = PolledPhase(board, period_s=60)
    tracing = traced(exporter, phase_of=phase)
    tracing(event())  # not read yet: no phase rather than a wait on the board
    for _ in range(500):  # bounded: the poller thread reads it at once
        if phase("tiny") is not None:
            break
        time.sleep(0.01)
    tracing(event())
    first, second = exporter.get_finished_spans()
    assert "modeldock.rollout.phase" not in dict(first.attributes or {})
    attrs = dict(second.attributes or {})
    assert attrs["modeldock.rollout.phase"] == "canary" and attrs["modeldock.rollout.candidate"] == "3"
    assert reads == ["tiny"]  # one board read per period, not one per request


def test_tracing_is_off_by_default_and_builds_no_thread() -> None:
    assert build_observers(ServerConfig()) == []
    before = threading.active_count()
    [observer] = build_observers(ServerConfig(tracing=True), env={})
    assert isinstance(observer, Tracing)
    assert threading.active_count() == before  # nothing runs before LitServe forks


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'",
        ),
    ],
)
def test_otel_settings_the_server_cannot_honour_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("/", ".")):
        build_observers(ServerConfig(tracing=True), env=env)


def test_the_sdk_switch_turns_tracing_off() -> None:
    assert build_observers(ServerConfig(tracing=True), env={"OTEL_SDK_DISABLED": "true"}) == []
    assert build_observers(ServerConfig(tracing=True), env={"OTEL_TRACES_EXPORTER": "none"}) == []


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    with Collector() as c:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{c.url}/v1/traces")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
        yield c


def test_spans_leave_a_forked_process_through_otlp(collector: Collector) -> None:
    """Made before a fork and used only after it, as in the server: the child (a multiprocessing
    child, like LitServe's HTTP processes) exports its span with the default batching OTLP/HTTP
    exporter, flushed when it exits; the parent never starts a provider (forked_span.py)."""
    ran = subprocess.run(
        [sys.executable, "-m", "tests.server.telemetry.forked_span"],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    span = collector.wait_for(lambda s: s.name == SPAN_NAME)
    assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
    assert span.attributes["modeldock.model"] == "tiny" and span.resource["service.name"] == "scoring"
