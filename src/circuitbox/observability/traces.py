"""Traces (`circuitbox[otel]`): configured from the standard `OTEL_*` variables, off and free without them.

The MCP SDK already makes the two spans the protocol has: a SERVER span for every upstream request (its
`OpenTelemetryMiddleware`, which continues a `traceparent` found in `params._meta`) and a CLIENT span for every
request sent downstream (which injects the current `traceparent` into that request's `_meta`), both named and
attributed after OpenTelemetry's MCP semantic conventions. It only needs a tracer provider to record them.
circuitbox adds what only it knows: on the upstream span the breaker's state, the call's outcome, the server and the
upstream session; and one INTERNAL span per downstream attempt (`circuitbox.attempt`), so that a half-open probe
and each try are visible, with the SDK's CLIENT span as its child.

Without the variables nothing from `opentelemetry.sdk` is imported and every helper here is a no-op: the SDK's
spans go to the API's non-recording default.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar, cast

from opentelemetry import trace

logger = logging.getLogger("circuitbox.traces")

# Attribute names (OpenTelemetry MCP semantic conventions, plus circuitbox's own namespace).
BREAKER_STATE = "circuitbox.breaker.state"
OUTCOME = "circuitbox.outcome"
SERVER = "circuitbox.server"
PROBE = "circuitbox.probe"
SESSION_ID = "mcp.session.id"
TOOL_NAME = "gen_ai.tool.name"

_tracer: trace.Tracer | None = None  # set by `enable()`: None means off, and the helpers cost one check
P = TypeVar("P")


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something circuitbox cannot do (an unknown exporter, the extra missing)."""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Do the standard variables ask for traces? An endpoint or an exporter other than `none`, and not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(environ: Mapping[str, str] = os.environ) -> Any | None:
    """Install a tracer provider exporting as the variables say; returns it (to `shutdown()` at exit), or None
    when they ask for no traces.

    `OTEL_TRACES_EXPORTER` is a comma list of `otlp` (the default; `OTEL_EXPORTER_OTLP_PROTOCOL` http/protobuf, or
    grpc with `opentelemetry-exporter-otlp-proto-grpc` installed) and `console` (to stderr: stdout may be the MCP
    channel). The service name defaults to `circuitbox`; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` apply.

    Raises:
        TracingConfigError: an unknown exporter or protocol, or the `otel` extra (or the grpc exporter) missing.
    """
    if not wanted(environ):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingConfigError(
            "the OTEL_* variables ask for traces, but the otel extra is not installed: pip install 'circuitbox[otel]'"
        ) from None
    exporters = [_exporter(name.strip(), environ) for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    attributes = {"service.name": environ.get("OTEL_SERVICE_NAME") or "circuitbox"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable(provider)
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip()
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,no-redef]
                OTLPSpanExporter,
            )
        else:
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf, grpc)"
            )
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        raise TracingConfigError(f"the OTLP {protocol} exporter is not installed: pip install {package}") from None
    return OTLPSpanExporter()  # it reads its endpoint, headers and timeout from the OTEL_* variables itself


def enable(provider: Any | None = None) -> None:
    """Record circuitbox's attributes and attempt spans (on `provider`, or the global one)."""
    global _tracer
    _tracer = (provider or trace.get_tracer_provider()).get_tracer("circuitbox")


def disable() -> None:
    global _tracer
    _tracer = None


def active() -> bool:
    return _tracer is not None


def annotate_call(server: str, result: Any, breaker: Any | None, session_id: str | None) -> None:
    """Put what circuitbox decided about one tools/call on the current span (the SDK's span of the upstream
    request): the outcome read off the answer, the breaker's state after the call, the server and the session."""
    meta = getattr(result, "meta", None) or {}
    if "circuitbox/fallback" in meta:
        how = "fallback"
    elif "circuitbox/breaker" in meta:
        how = "rejected"
    elif "circuitbox/server" in meta:
        how = "unavailable"
    else:
        how = "error" if getattr(result, "is_error", False) else "success"
    span = trace.get_current_span()
    span.set_attribute(SERVER, server)
    span.set_attribute(OUTCOME, how)
    if breaker is not None:
        span.set_attribute(BREAKER_STATE, str(breaker.state))
    if session_id:
        span.set_attribute(SESSION_ID, session_id)


def attempt(server: str, tool: str, state: str, permit: P) -> AbstractContextManager[P]:
    """A span around one downstream attempt of `tool` (as the downstream names it), yielding the permit to report
    its outcome on: with traces on, a wrapper that also puts the outcome on the span. The SDK's CLIENT span of the
    request sent is the span's child and carries the trace on to the downstream."""
    if _tracer is None:
        return nullcontext(permit)
    return _attempt_span(_tracer, server, tool, state, permit)


@contextmanager
def _attempt_span(tracer: trace.Tracer, server: str, tool: str, state: str, permit: P) -> Iterator[P]:
    attributes: dict[str, str | bool] = {
        "mcp.method.name": "tools/call",
        TOOL_NAME: tool,
        SERVER: server,
        BREAKER_STATE: state,
        PROBE: state == "half_open",
    }
    with tracer.start_as_current_span(f"circuitbox.attempt {server}/{tool}", attributes=attributes) as span:
        yield cast(P, TracedPermit(permit, span))


class TracedPermit:
    """A permit that also records its outcome on the attempt's span (only made while traces are on)."""

    __slots__ = ("_permit", "_span")
    rejected = False

    def __init__(self, permit: Any, span: trace.Span) -> None:
        self._permit = permit
        self._span = span

    def success(self) -> None:
        self._span.set_attribute(OUTCOME, "success")
        self._permit.success()

    def failure(self, kind: str = "exception", error: BaseException | str | None = None) -> None:
        self._span.set_attribute(OUTCOME, "failure")
        self._span.set_attribute("error.type", kind)
        self._span.set_status(trace.StatusCode.ERROR, str(error or kind))
        self._permit.failure(kind, error)

    def ignored(self) -> None:
        self._span.set_attribute(OUTCOME, "ignored")
        self._permit.ignored()

    def release(self) -> None:
        self._span.set_attribute(OUTCOME, "cancelled")
        self._permit.release()
