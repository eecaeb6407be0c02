from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import anyio
import httpx2
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from circuitbox.breakers.testing import FakeClock
from circuitbox.observability import (
    TransitionLogger,
    configure_logging,
    log_transition,
    metrics_app,
    metrics_route,
    start_metrics_server,
)

from .obs_support import collector_with, make_breaker, serving, taking, trip

pytestmark = pytest.mark.anyio

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_the_asgi_app_serves_text_and_openmetrics_inside_a_starlette_app() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = collector_with(breaker)
    await breaker.call(taking, clock, 0.01)
    app = Starlette(routes=[metrics_route(collector.registry, "/metrics")])
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://proxy") as client:
        text = await client.get("/metrics")
        om = await client.get("/metrics", headers={"Accept": OPENMETRICS})
        head = await client.head("/metrics")
        post = await client.post("/metrics")
    assert text.status_code == 200 and "circuit_breaker_state{" in text.text
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert head.status_code == 200 and head.content == b""
    assert post.status_code == 405


async def test_the_bare_asgi_app_answers_405_to_anything_but_get_and_head() -> None:
    app = metrics_app(CollectorRegistry())
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://proxy") as client:
        assert (await client.get("/anything")).status_code == 200
        response = await client.delete("/metrics")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


async def test_the_metrics_server_binds_loopback_only_and_answers_404_elsewhere() -> None:
    async with anyio.create_task_group() as tg:
        port = await tg.start(start_metrics_server, CollectorRegistry(), "127.0.0.1", 0)
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        tg.cancel_scope.cancel()

    async with serving(CollectorRegistry()) as url, httpx2.AsyncClient(timeout=5) as client:
        assert url.startswith("http://127.0.0.1:")
        assert (await client.get(url.replace("/metrics", "/nope"))).status_code == 404
        assert (await client.post(url)).status_code == 405
        assert (await client.head(url)).status_code == 200
        ok = await client.get(url + "?name[]=circuit_breaker_state")
        assert ok.status_code == 200


async def test_the_metrics_server_drops_a_garbage_request_and_keeps_serving() -> None:
    async with serving(CollectorRegistry()) as url:
        port = int(url.split(":")[2].split("/")[0])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"NONSENSE\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 400")
        async with httpx2.AsyncClient(timeout=5) as client:
            assert (await client.get(url)).status_code == 200


async def test_transitions_are_logged_as_json_lines_on_stderr(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("json", "info")
    configure_logging("json", "INFO")  # twice: still one line per record
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    breaker.add_listener(TransitionLogger(collector.labels_for))
    await trip(breaker, clock)

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [json.loads(line) for line in captured.err.splitlines() if "circuitbox.transitions" in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["logger"] == "circuitbox.transitions" and line["level"] == "warning"
    assert (line["server"], line["tool"], line["from_state"], line["to_state"]) == (
        "docker",
        "ps",
        "closed",
        "open",
    )
    assert line["message"].startswith("circuit docker/ps: closed -> open")


async def test_text_logs_name_the_breaker_and_the_move(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("text", logging.INFO)
    clock = FakeClock()
    breaker = make_breaker("payments", clock)
    breaker.add_listener(log_transition)
    await trip(breaker, clock)
    clock.advance(11)
    await breaker.call(taking, clock, 0.01)
    err = capsys.readouterr().err
    assert "WARNING circuitbox.transitions: circuit payments: closed -> open" in err
    assert "INFO circuitbox.transitions: circuit payments: open -> half_open" in err


def test_configure_logging_refuses_unknown_formats_and_levels(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "INFO")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("text", "chatty")
