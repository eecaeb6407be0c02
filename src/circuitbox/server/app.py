"""Running the proxy: the stdio and HTTP front ends, the metrics endpoint and bearer-token auth."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from circuitbox.cluster import ClusterStore
from circuitbox.config.load import ConfigError, ProxyConfig
from circuitbox.observability.cluster import bind_cluster_gauges
from circuitbox.observability.collector import MetricsCollector
from circuitbox.observability.limits import LimitsCollector
from circuitbox.observability.logging import TransitionLogger
from circuitbox.server._pipes import stdio_pipes
from circuitbox.server._streams import AnswerMalformed
from circuitbox.server.lane import fast_lane
from circuitbox.server.proxy import Proxy
from circuitbox.server.stdio_child import signal_every_group

logger = logging.getLogger("circuitbox")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def build_proxy(config: ProxyConfig, *, metrics: bool = True, **kwargs: Any) -> tuple[Proxy, MetricsCollector | None]:
    """A proxy whose breakers feed a metrics collector on its own Prometheus registry (never the global one), and
    share their state with the fleet when the config has a `cluster` (the store's task starts in `serve`)."""
    proxy, collector = _build_proxy(config, metrics=metrics, **kwargs)
    if config.cluster is not None:
        store = ClusterStore(config.cluster.redis_url, config.cluster.group, shown_url=config.cluster.shown_url)
        store.on_configure = lambda server, pattern, settings: _configure_here(proxy, server, pattern, settings)
        proxy.registry.set_store(store)
        if collector is not None:
            collector.on_registry(lambda registry: bind_cluster_gauges(registry, store))
    return proxy, collector


def _configure_here(proxy: Proxy, server: str, pattern: str, settings: dict[str, Any]) -> None:
    proxy.configure(server, pattern, settings, proxy.tools_of(server))
    proxy.audit("configure (from the cluster)", server, pattern, "-", repr(settings))


def _build_proxy(config: ProxyConfig, *, metrics: bool, **kwargs: Any) -> tuple[Proxy, MetricsCollector | None]:
    if not metrics:
        proxy = Proxy(config, **kwargs)
        proxy.registry.add_listener(TransitionLogger(proxy.guard.labels_for))
        return proxy, None
    collector = MetricsCollector()  # its registry (and prometheus_client) made on the first scrape, not at start
    proxy = Proxy(
        config,
        on_new_breaker=lambda breaker, server, tool: collector.bind(breaker.name, server=server, tool=tool),
        on_forget_breaker=collector.forget,
        tool_stats=lambda breaker: collector.tool_stats(breaker.name),
        on_count=collector.count,
        **kwargs,
    )
    collector.attach(proxy.registry)
    guard = proxy.guard

    def limit_rows() -> list[tuple[str, str, int, Mapping[str, int]]]:
        return [(s, t, lim.inflight, lim.limited) for s, t, lim in guard.limit_stats()]

    collector.on_registry(lambda registry: LimitsCollector(registry, limit_rows))
    proxy.registry.add_listener(TransitionLogger(proxy.guard.labels_for))
    return proxy, collector


def _lifespan_of(inner: Starlette) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The outer app runs the MCP app's lifespan (its session manager) as its own."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with inner.router.lifespan_context(inner):
            yield

    return lifespan


class _FirstScrape:
    """/metrics: the collector's registry, made (prometheus_client imported) when first scraped, not when the
    routes are: stdio mode's metrics port opens beside the proxy's start."""

    def __init__(self, collector: MetricsCollector) -> None:
        self._collector = collector
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._app is None:
            from circuitbox.observability.http import metrics_app

            self._app = metrics_app(self._collector.registry)
        await self._app(scope, receive, send)


def observability_routes(proxy: Proxy, collector: MetricsCollector | None) -> list[Route | Mount]:
    """/metrics (when metrics are collected) and the status routes: the same on the HTTP listener and on stdio
    mode's metrics port."""
    from circuitbox.observability.status_page import PATHS as STATUS_PATHS
    from circuitbox.observability.status_page import StatusApp

    routes: list[Route | Mount] = []
    if collector is not None:
        routes.append(Route("/metrics", _FirstScrape(collector)))
    status = StatusApp(proxy)
    routes += [Route(path, status) for path in STATUS_PATHS]  # StatusApp answers 405 itself
    return routes


def http_app(
    proxy: Proxy,
    collector: MetricsCollector | None,
    host: str,
    token: str | None,
    extra_hosts: Sequence[str] = (),
    port: int = 8765,
) -> ASGIApp:
    from mcp.server.transport_security import TransportSecuritySettings

    from circuitbox.observability.access import AccessGuard
    from circuitbox.server.http_lane import HTTPLane
    from circuitbox.server.http_sessions import mcp_http_app
    from circuitbox.server.malformed import AnswerMalformedHTTP

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
        max_request_body_size=proxy.config.max_message_bytes,
        lane=HTTPLane(proxy),  # a published tool's call answered past the SDK's transport, as the SDK would
    )
    app = Starlette(
        routes=[*observability_routes(proxy, collector), Mount("/", app=AnswerMalformedHTTP(mcp_app))],
        lifespan=_lifespan_of(mcp_app),
    )
    # One guard for every route: exact Host and Origin (the SDK's check above matches ports by prefix), the token.
    return AccessGuard(app, host, port, token, extra_hosts)


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
    # Before any downstream connects: behind the stdio upstream each is offered what its one client declares.
    proxy.stdio_upstream = transport != "http"
    stopping = anyio.Event()  # the front end has ended (or was stopped at once): downstreams are being ended
    # The signal watcher runs outside the task group it stops, so that a signal still finds it while the downstreams
    # are being ended (without it, the default action would kill the proxy and orphan their process trees).
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            store = proxy.registry.store
            if isinstance(store, ClusterStore):
                tg.start_soon(store.run, name="cluster link")
            outer.start_soon(_shutdown_on_signals, proxy, stop, tg.cancel_scope, stopping)
            if reload_config is not None:
                tg.start_soon(_reload_on_sighup, proxy, reload_config)
            if transport == "http":
                app = http_app(proxy, collector, host, token, allowed_hosts, port)
                await _serve_http(app, host, port, stop)
            else:
                port_ = metrics_port if metrics_port is not None else config.metrics_port
                if port_ is not None:
                    tg.start_soon(_serve_metrics, proxy, collector, config.metrics_host, port_, token, allowed_hosts)
                server = proxy.build_server()
                proxy.serve_one_client(server)  # one client: a downstream's question with no call in flight is its
                async with (
                    stdio_pipes(stop, config.max_message_bytes) as (read, write),
                    fast_lane(proxy, AnswerMalformed(read, write), write, tap=read) as upstream,
                ):
                    await server.run(upstream, write, proxy.initialization_options(server))
            # Cancelling the owners ends every downstream: each stdio child's whole process group.
            stopping.set()
            logger.info("front end stopped: ending the downstreams")
            tg.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def _shutdown_on_signals(
    proxy: Proxy, stop: anyio.Event, everything: anyio.CancelScope, stopping: anyio.Event
) -> None:
    """SIGTERM / SIGINT: refuse new calls, give those in flight `shutdown_timeout`, answer the rest with an error,
    then `stop` the front end. A second signal stops everything at once; a signal while the downstreams are being
    ended (the front end is done) ends their process groups at once instead of after their grace period."""
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping.is_set() or proxy.drain.closing:
                    ended = signal_every_group(signal.SIGTERM)
                    logger.warning("%s again: stopping now (%d downstream process groups ended)", name, ended)
                    stopping.set()
                    everything.cancel()
                    continue  # keep receiving: a later signal must not find the default action (death) in place
                tg.start_soon(_drain, proxy, stop, name)


async def _drain(proxy: Proxy, stop: anyio.Event, name: str) -> None:
    timeout = proxy.config.shutdown_timeout
    count = proxy.drain.in_flight
    logger.warning("%s: shutting down; %s in flight get up to %gs to finish", name, _calls(count), timeout)
    cancelled = await proxy.drain.close(timeout)
    if cancelled:
        logger.warning("shutdown: %s did not finish in %gs, answered with an error", _calls(cancelled), timeout)
    stop.set()


async def _serve_metrics(
    proxy: Proxy,
    collector: MetricsCollector | None,
    host: str,
    port: int,
    token: str | None,
    extra_hosts: Sequence[str] = (),
) -> None:
    """stdio mode's metrics port: /metrics, the status page, /healthz and /readyz, behind the same guard as the HTTP
    listener. A busy port (two agents sharing one config, say) costs these endpoints, never the proxy."""
    from circuitbox.observability._asgi_server import serve_asgi
    from circuitbox.observability.access import AccessGuard, is_loopback

    if not is_loopback(host) and not token:
        logger.error(
            "metrics endpoint disabled: it would listen on %s without a token; set --auth-token-file, "
            "$CIRCUITBOX_AUTH_TOKEN or --auth-token (or metrics.host 127.0.0.1)",
            host,
        )
        return
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        logger.error("metrics endpoint disabled: cannot listen on %s:%d: %s", host, port, exc)
        return
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    app = AccessGuard(Starlette(routes=observability_routes(proxy, collector)), host, bound, token, extra_hosts)
    shown = f"[{host}]" if ":" in host else host
    # A log line like the HTTP listener's (INFO, shown by default): --log-format json keeps one object per line.
    logger.info("circuitbox status page: http://%s:%d/status (metrics at /metrics)", shown, bound)
    await serve_asgi(listener, app, (host, bound))


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
    logger.info("circuitbox listening on http://%s:%d/mcp (status page at /status)", host, port)
    async with anyio.create_task_group() as tg:
        if stop is not None:

            async def stopper() -> None:
                await stop.wait()
                server.should_exit = True

            tg.start_soon(stopper)
        await server.serve()
        tg.cancel_scope.cancel()
