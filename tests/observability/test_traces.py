"""Traces: the upstream request's span, circuitbox's attempt span and the SDK's downstream span as parent and child,
the client's trace continued and passed on to a real downstream process; configured from the OTEL_* variables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.memory import create_client_server_memory_streams
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from circuitbox.breakers import CircuitState
from circuitbox.config.load import load_config
from circuitbox.observability import traces
from circuitbox.server.app import build_proxy
from circuitbox.server.proxy import Proxy
from circuitbox.server.transports import http_client
from tests.net import free_port, import_path_env, wait_for_port
from tests.proxy.harness import write_config

META_SERVER = str(Path(__file__).with_name("meta_server.py"))


def meta_server() -> dict[str, Any]:
    entry: dict[str, Any] = {"command": sys.executable, "args": [META_SERVER]}
    if env := import_path_env():
        entry["env"] = env
    return entry


class Recorder(SpanProcessor):
    """Keeps the spans that end while a test listens (the global provider outlives the test)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.listening = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.listening:
            self.spans.append(span)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.spans]
        return found[0]


class Listening(trace.TracerProvider):
    """The global provider of this test process: real SDK spans while a test listens, the API's no-op spans
    otherwise. The API allows one global provider per process, and the MCP SDK binds its tracer to it once: a plain
    SDK provider left in place would make every later in-process proxy of the suite record spans and inject a
    `traceparent` into what it sends downstream."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.sdk = TracerProvider()
        self.sdk.add_span_processor(recorder)

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _Either(self, self.sdk.get_tracer(instrumenting_module_name))


class _Either(trace.Tracer):
    def __init__(self, provider: Listening, sdk: trace.Tracer) -> None:
        self.provider, self.sdk, self.off = provider, sdk, trace.NoOpTracer()

    def _now(self) -> trace.Tracer:
        return self.sdk if self.provider.recorder.listening else self.off

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._now().start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        with self._now().start_as_current_span(*args, **kwargs) as span:
            yield span


_RECORDER = Recorder()
_PROVIDER = Listening(_RECORDER)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    if trace.get_tracer_provider() is not _PROVIDER:
        trace.set_tracer_provider(_PROVIDER)  # once per process (see Listening)
    _RECORDER.spans.clear()
    _RECORDER.listening = True
    traces.enable(_PROVIDER.sdk)
    try:
        yield _RECORDER
    finally:
        traces.disable()
        _RECORDER.listening = False


@asynccontextmanager
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[Proxy, ClientSession]]:
    """circuitbox in this process (so its spans reach the recorder) in front of a real downstream process."""
    config = load_config(write_config(tmp_path, {"mcpServers": {"m": meta_server()}}))
    proxy, _ = build_proxy(config)
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        server = proxy.build_server()
        async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
            tg.start_soon(server.run, s_read, s_write, proxy.initialization_options(server))
            async with ClientSession(c_read, c_write) as session:
                with anyio.fail_after(60):
                    await session.initialize()
                    await proxy.wait_first_attempts()
                yield proxy, session
        tg.cancel_scope.cancel()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.anyio
async def test_a_call_makes_upstream_attempt_and_downstream_spans_and_the_downstream_gets_the_trace(
    tmp_path: Path, recorder: Recorder
) -> None:
    async with in_process(tmp_path) as (_, session):
        with trace.get_tracer("agent").start_as_current_span("agent turn") as agent:
            with anyio.fail_after(30):
                result = await session.call_tool("m__meta", {})
    assert not result.is_error
    received = json.loads(result.content[0].text)  # type: ignore[union-attr]

    upstream = recorder.one("tools/call m__meta")
    attempt = recorder.one("circuitbox.attempt m/meta")
    downstream = recorder.one("MCP send tools/call meta")
    trace_id = agent.get_span_context().trace_id
    assert {s.context.trace_id for s in (upstream, attempt, downstream)} == {trace_id}  # the client's trace, continued
    assert parent_of(recorder.one("MCP send tools/call m__meta")) == agent.get_span_context().span_id
    assert parent_of(upstream) == recorder.one("MCP send tools/call m__meta").context.span_id
    assert parent_of(attempt) == upstream.context.span_id
    assert parent_of(downstream) == attempt.context.span_id
    assert upstream.kind is trace.SpanKind.SERVER and downstream.kind is trace.SpanKind.CLIENT
    assert upstream.attributes is not None and attempt.attributes is not None
    assert upstream.attributes["mcp.method.name"] == "tools/call"
    assert upstream.attributes["gen_ai.tool.name"] == "m__meta"
    assert upstream.attributes[traces.SERVER] == "m"
    assert upstream.attributes[traces.OUTCOME] == "success"
    assert upstream.attributes[traces.BREAKER_STATE] == "closed"
    assert traces.SESSION_ID not in upstream.attributes  # stdio-like: one client, no session id
    assert attempt.attributes[traces.OUTCOME] == "success"
    assert attempt.attributes[traces.PROBE] is False
    assert attempt.attributes["gen_ai.tool.name"] == "meta"
    # The downstream received the trace context of the span that sent it the request.
    sent = downstream.context
    assert received["traceparent"] == f"00-{trace_id:032x}-{sent.span_id:016x}-{sent.trace_flags:02x}"


@pytest.mark.anyio
async def test_a_rejected_call_has_no_attempt_and_a_probe_is_marked(tmp_path: Path, recorder: Recorder) -> None:
    async with in_process(tmp_path) as (proxy, session):
        breaker, _ = proxy.guard.breaker("m", "meta")
        breaker.force(CircuitState.FORCED_OPEN)
        with anyio.fail_after(30):
            rejected = await session.call_tool("m__meta", {})
        assert rejected.is_error
        assert recorder.named("circuitbox.attempt m/meta") == []
        upstream = recorder.one("tools/call m__meta")
        assert upstream.attributes is not None
        assert upstream.attributes[traces.OUTCOME] == "rejected"
        assert upstream.attributes[traces.BREAKER_STATE] == "forced_open"

        breaker.reset()
        for _ in range(1000):  # trip it the way failures do, then end its open period as a reconnect would
            if breaker.state is CircuitState.OPEN:
                break
            permit = breaker.acquire()
            assert not permit.rejected
            permit.failure("transport", "test")
        assert breaker.probe_now("test")
        recorder.spans.clear()
        with anyio.fail_after(30):
            assert not (await session.call_tool("m__meta", {})).is_error
        probe = recorder.one("circuitbox.attempt m/meta")
        assert probe.attributes is not None
        assert probe.attributes[traces.PROBE] is True and probe.attributes[traces.BREAKER_STATE] == "half_open"
        after = recorder.one("tools/call m__meta").attributes
        assert after is not None and after[traces.BREAKER_STATE] == str(breaker.state)  # the state after the call


def spans_in(text: str) -> list[dict[str, Any]]:
    """The span documents the console exporter wrote (pretty-printed JSON objects), among the log lines."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while (index := text.find("\n{", index)) >= 0:
        try:
            document, end = decoder.raw_decode(text, index + 1)
        except json.JSONDecodeError:
            index += 1
            continue
        if isinstance(document, dict) and "context" in document:
            found.append(document)
        index = end
    return found


@pytest.mark.anyio
async def test_serve_exports_spans_as_the_otel_variables_say_with_the_http_session(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, {"mcpServers": {"m": meta_server()}})
    env = {
        **os.environ,
        **import_path_env(),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "circuitbox-under-test",
    }
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--transport", "http"]
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = await anyio.open_process([*args, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            await wait_for_port(port)
            async with (
                http_client({}) as http,
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                with anyio.fail_after(60):
                    await session.initialize()
                    assert not (await session.call_tool("m__meta", {})).is_error
        finally:
            proc.send_signal(signal.SIGTERM)  # a graceful stop flushes the batched spans
            with anyio.fail_after(60):
                await proc.wait()
    spans = {s["name"]: s for s in spans_in(log.read_text())}
    upstream, attempt = spans["tools/call m__meta"], spans["circuitbox.attempt m/meta"]
    assert upstream["resource"]["attributes"]["service.name"] == "circuitbox-under-test"
    assert upstream["attributes"][traces.OUTCOME] == "success"
    assert upstream["attributes"][traces.SESSION_ID]  # the upstream HTTP session of the call
    assert attempt["parent_id"] == upstream["context"]["span_id"]
    assert spans["MCP send tools/call meta"]["parent_id"] == attempt["context"]["span_id"]


@pytest.mark.anyio
async def test_serve_with_an_exporter_it_does_not_know_says_traces_are_off_and_serves(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"m": meta_server()}})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "circuitbox", "serve", "--config", str(config)],
        env={
            **import_path_env(),
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
            "OTEL_TRACES_EXPORTER": "zipkin",
        },
    )
    log = tmp_path / "serve.log"
    with log.open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(60):
                await session.initialize()
                assert not (await session.call_tool("m__meta", {})).is_error
    assert "traces off: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'" in log.read_text()


def test_the_variables_ask_for_traces_with_an_endpoint_or_an_exporter_unless_disabled() -> None:
    assert not traces.wanted({})
    assert traces.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert traces.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert traces.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not traces.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not traces.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert traces.configure({}) is None


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "proto-grpc"),
    ],
)
def test_a_wrong_exporter_or_protocol_is_named_before_anything_is_installed(
    environ: dict[str, str], problem: str
) -> None:
    before = trace.get_tracer_provider()
    with pytest.raises(traces.TracingConfigError, match=problem):
        traces.configure(environ)
    assert trace.get_tracer_provider() is before and not traces.active()


def test_without_the_extra_the_variables_get_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # what `import` sees without the package
    with pytest.raises(traces.TracingConfigError, match=r"pip install 'circuitbox\[otel\]'"):
        traces.configure({"OTEL_TRACES_EXPORTER": "console"})


def test_without_the_variables_nothing_of_the_otel_sdk_is_imported() -> None:
    code = (
        "import sys; import circuitbox.server.app, circuitbox.commands.serve;"
        "from circuitbox.observability import traces; assert traces.configure({}) is None;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **import_path_env()}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
