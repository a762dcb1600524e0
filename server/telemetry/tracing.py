"""OpenTelemetry tracing: one span per answered request, parented by the client's `traceparent`.

The observer is made in the supervisor and runs in each HTTP (and gRPC) process, which LitServe
forks: the tracer provider and its export thread are made on first use in the process that uses
them, never before the fork. The span is written after the reply from the request's recorded
times, so tracing adds no await and no lock to the request path; export runs in the SDK's
BatchSpanProcessor thread (its queue drops spans when full, it never waits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..dataplane.events import RequestEvent
from .phase import PhaseOf
from .process import at_process_exit

log = logging.getLogger(__name__)
SPAN_NAME = "modeldock.infer"
SERVICE_NAME = "modeldock"
EXPORTERS = ("otlp", "console", "none")  # OTEL_TRACES_EXPORTER values this server honours
PROTOCOLS = ("http/protobuf",)  # the one OTLP transport installed (opentelemetry-exporter-otlp-proto-http)
_PROPAGATOR = TraceContextTextMapPropagator()


def env_problems(env: Mapping[str, str]) -> list[str]:
    """OTEL_* settings this server cannot honour, each named (checked once, at start-up)."""
    problems = []
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter not in EXPORTERS:
        problems.append(f"OTEL_TRACES_EXPORTER={exporter!r}: this server exports traces with one of {list(EXPORTERS)}")
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if var in env:
            if env[var].strip() not in PROTOCOLS:
                problems.append(f"{var}={env[var]!r}: only {list(PROTOCOLS)} is installed")
            break  # the traces-specific variable wins over the general one
    return problems


def disabled(env: Mapping[str, str]) -> bool:
    """The SDK's own switch, OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none."""
    return (
        env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
    )


def default_processor() -> SpanProcessor:
    """The exporter the standard environment names, behind a batching export thread."""
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:  # imported here: it pulls in requests and protobuf, only for processes that trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, ...
    return BatchSpanProcessor(exporter)  # OTEL_BSP_* size its queue and batches


def resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with `modeldock` as the default service name."""
    found = Resource.create()
    if str(found.attributes.get("service.name", "")).startswith("unknown_service"):
        found = found.merge(Resource({"service.name": SERVICE_NAME}))
    return found


class Tracing:
    """A RequestObserver that records each answered request as a SERVER span."""

    def __init__(
        self, processor: Callable[[], SpanProcessor] = default_processor, phase_of: PhaseOf | None = None
    ) -> None:
        self._make_processor = processor
        self._phase_of = phase_of
        self._pid = 0
        self._tracer: Tracer | None = None
        self._provider: TracerProvider | None = None

    def _start(self) -> Tracer:
        """This process's provider and export thread (the supervisor's copy, if any, stays behind)."""
        # The sampler follows OTEL_TRACES_SAMPLER (default: parent-based, always on).
        provider = TracerProvider(resource=resource(), shutdown_on_exit=False)
        provider.add_span_processor(self._make_processor())
        at_process_exit(provider.shutdown)  # flushes the queued spans
        self._provider, self._pid = provider, os.getpid()
        self._tracer = tracer = provider.get_tracer("modeldock.server")
        return tracer

    def __call__(self, event: RequestEvent) -> None:
        tracer = self._tracer if self._pid == os.getpid() and self._tracer is not None else self._start()
        parent = _PROPAGATOR.extract(event.headers) if "traceparent" in event.headers else None
        span = tracer.start_span(
            SPAN_NAME, context=parent, kind=SpanKind.SERVER, start_time=event.started_ns, attributes=attributes(event)
        )
        if not span.is_recording():  # sampled out: nothing more to build
            return
        known = self._phase_of(event.model) if self._phase_of is not None else None
        if known is not None:
            span.set_attribute("modeldock.rollout.phase", known[0])
            if known[1] is not None:
                span.set_attribute("modeldock.rollout.candidate", str(known[1]))
        if event.status >= 500:  # a server span's 4xx is the client's error, not the span's (semconv)
            span.set_status(Status(StatusCode.ERROR, event.error))
            span.set_attribute("error.type", str(event.status))
        span.end(end_time=event.started_ns + int(event.duration_s * 1e9))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now (tests, and before a planned exit)."""
        if self._provider is None or self._pid != os.getpid():
            return True
        return self._provider.force_flush(int(timeout_s * 1000))


def attributes(event: RequestEvent) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "modeldock.model": event.model,
        "modeldock.model.version": event.version,
        "modeldock.protocol": event.protocol,
        "modeldock.status": event.status,
        "modeldock.batch.rows": event.batch_rows,
        "modeldock.queue_wait_s": event.queue_s,
        "modeldock.inference_s": event.infer_s,
    }
    if event.protocol == "rest":
        attrs["http.request.method"] = "POST"
        attrs["http.response.status_code"] = event.status
    if event.request is not None:
        attrs["modeldock.request.rows"] = event.request.rows
        if event.request.id:
            attrs["modeldock.request.id"] = event.request.id
    if event.error:
        attrs["modeldock.error"] = event.error[:512]  # messages can quote input; keep spans small
    return attrs
