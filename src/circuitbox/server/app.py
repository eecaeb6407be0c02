"""Running the proxy: the stdio and HTTP front ends, the metrics endpoint and bearer-token auth."""

from __future__ import annotations

import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from circuitbox.config.load import ConfigError, ProxyConfig
from circuitbox.observability.collector import MetricsCollector
from circuitbox.observability.http import metrics_app, start_metrics_server
from circuitbox.observability.limits import LimitsCollector
from circuitbox.observability.logging import TransitionLogger
from circuitbox.observability.status_page import PATHS as STATUS_PATHS
from circuitbox.observability.status_page import StatusApp
from circuitbox.server._pipes import stdio_pipes
from circuitbox.server._streams import AnswerMalformed
from circuitbox.server.http_sessions import mcp_http_app
from circuitbox.server.malformed import AnswerMalformedHTTP
from circuitbox.server.proxy import Proxy

logger = logging.getLogger("circuitbox")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def build_proxy(config: ProxyConfig, *, metrics: bool = True, **kwargs: Any) -> tuple[Proxy, MetricsCollector | None]:
    """A proxy whose breakers feed a metrics collector on its own Prometheus registry (never the global one)."""
    if not metrics:
        proxy = Proxy(config, **kwargs)
        proxy.registry.add_listener(TransitionLogger(proxy.guard.labels_for))
        return proxy, None
    collector = MetricsCollector(CollectorRegistry())
    proxy = Proxy(
        config,
        on_new_breaker=lambda breaker, server, tool: collector.bind(breaker.name, server=server, tool=tool),
        on_forget_breaker=collector.forget,
        tool_stats=lambda breaker: collector.tool_stats(breaker.name),
        **kwargs,
    )
    collector.attach(proxy.registry)
    guard = proxy.guard
    LimitsCollector(
        collector.registry, lambda: [(s, t, lim.inflight, lim.limited) for s, t, lim in guard.limit_stats()]
    )
    proxy.registry.add_listener(TransitionLogger(proxy.guard.labels_for))
    return proxy, collector


class BearerAuth:
    """Rejects every request without `Authorization: Bearer <token>` (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # /healthz answers without the token: load balancers probe it (the README's access rules).
        if scope["type"] == "http" and scope.get("path") != "/healthz":
            headers = dict(scope.get("headers") or [])
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"401 Unauthorized: a valid bearer token is required\n",
                    }
                )
                return
        await self.app(scope, receive, send)


def _lifespan_of(inner: Starlette) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The outer app runs the MCP app's lifespan (its session manager) as its own."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with inner.router.lifespan_context(inner):
            yield

    return lifespan


def http_app(
    proxy: Proxy, collector: MetricsCollector | None, host: str, token: str | None, extra_hosts: Sequence[str] = ()
) -> ASGIApp:
    server = proxy.build_server()
    # DNS-rebinding protection stays on whatever the bind address: the Host header must name this listener.
    allowed = {f"{host}:*", "127.0.0.1:*", "localhost:*", "[::1]:*", *(f"{h}:*" for h in extra_hosts)}
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(allowed),
        allowed_origins=sorted(f"http://{h}" for h in allowed),
    )
    mcp_app = mcp_http_app(
        server,
        path="/mcp",
        security=security,
        # Ours, not the SDK's 10,000 sessions and 30 minutes; past the cap the longest-idle session makes room.
        max_sessions=proxy.config.http_max_sessions,
        session_idle_timeout=proxy.config.http_session_idle_timeout,
    )
    routes: list[Route | Mount] = [Mount("/", app=AnswerMalformedHTTP(mcp_app))]
    if collector is not None:
        routes.insert(0, Route("/metrics", metrics_app(collector.registry)))
    status = StatusApp(proxy)
    routes[:0] = [Route(path, status) for path in STATUS_PATHS]  # StatusApp answers 405 itself
    app = Starlette(
        routes=routes,
        lifespan=_lifespan_of(mcp_app),
    )
    return BearerAuth(app, token) if token else app


async def serve(
    config: ProxyConfig,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    metrics_port: int | None = None,
    token: str | None = None,
    *,
    metrics: bool = True,
    reload_config: Callable[[], ProxyConfig] | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    proxy, collector = build_proxy(config, metrics=metrics)
    stop = anyio.Event()  # set once the calls in flight are answered: the front end stops, then everything else
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        tg.start_soon(_shutdown_on_signals, proxy, stop, tg.cancel_scope)
        if reload_config is not None:
            tg.start_soon(_reload_on_sighup, proxy, reload_config)
        if transport == "http":
            await _serve_http(http_app(proxy, collector, host, token, allowed_hosts), host, port, stop)
        else:
            port_ = metrics_port if metrics_port is not None else config.metrics_port
            if port_ is not None and collector is not None:
                tg.start_soon(_serve_metrics, collector.registry, config.metrics_host, port_)
            server = proxy.build_server()
            proxy.stdio_upstream = True  # one client: a downstream's question with no call in flight is its
            async with stdio_pipes(stop) as (read, write):
                await server.run(AnswerMalformed(read, write), write, proxy.initialization_options(server))
        # Cancelling the owners ends every downstream: each stdio child's whole process group.
        tg.cancel_scope.cancel()


async def _shutdown_on_signals(proxy: Proxy, stop: anyio.Event, everything: anyio.CancelScope) -> None:
    """SIGTERM / SIGINT: refuse new calls, give those in flight `shutdown_timeout`, answer the rest with an error,
    then `stop` the front end. A second signal stops everything at once."""
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if proxy.drain.closing:
                    logger.warning("%s again: stopping now", signal.Signals(signum).name)
                    everything.cancel()
                    return
                tg.start_soon(_drain, proxy, stop, signal.Signals(signum).name)


async def _drain(proxy: Proxy, stop: anyio.Event, name: str) -> None:
    timeout = proxy.config.shutdown_timeout
    count = proxy.drain.in_flight
    logger.warning("%s: shutting down; %s in flight get up to %gs to finish", name, _calls(count), timeout)
    cancelled = await proxy.drain.close(timeout)
    if cancelled:
        logger.warning("shutdown: %s did not finish in %gs, answered with an error", _calls(cancelled), timeout)
    stop.set()


async def _serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """A busy metrics port (two agents sharing one config, say) costs the metrics endpoint, never the proxy."""
    try:
        await start_metrics_server(registry, host, port)
    except OSError as exc:
        logger.error("metrics endpoint disabled: cannot listen on %s:%d: %s", host, port, exc)


async def _reload_on_sighup(proxy: Proxy, reload_config: Callable[[], ProxyConfig]) -> None:
    """SIGHUP re-reads the config file; a bad file is reported and the running config stays in force."""
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                await proxy.reload(reload_config())
            except (ConfigError, ValueError) as exc:
                logger.error("config reload refused, keeping the running config: %s", exc)
            except Exception:  # a reload must never take the proxy down
                logger.exception("config reload failed, keeping the running config")


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


async def _serve_http(app: ASGIApp, host: str, port: int, stop: anyio.Event | None = None) -> None:
    """uvicorn until `stop`: then it closes its listener and gives the connections a moment to send what is left
    (the answers are already written: shutdown drained the calls first), then ends the sessions."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:  # SIGTERM / SIGINT are ours (_shutdown_on_signals)
            yield

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = Server(config)
    logger.info("circuitbox listening on http://%s:%d/mcp", host, port)
    async with anyio.create_task_group() as tg:
        if stop is not None:

            async def stopper() -> None:
                await stop.wait()
                server.should_exit = True

            tg.start_soon(stopper)
        await server.serve()
        tg.cancel_scope.cancel()
