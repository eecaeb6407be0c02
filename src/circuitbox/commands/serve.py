"""`circuitbox serve`: the proxy on stdio (what agent clients launch) or streamable HTTP."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import socket
import sys

from circuitbox.config.load import ConfigError, ProxyConfig

logger = logging.getLogger("circuitbox")

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file (default: $CIRCUITBOX_CONFIG, ./circuitbox.json, ./circuitbox.toml)"
    )
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use to reach the HTTP listener (DNS-rebinding protection; repeatable)",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="stdio mode: serve /metrics on this port (over HTTP it is on the listener)"
    )
    parser.add_argument("--environment", help="environment profile (development, staging, production, testing)")
    parser.add_argument(
        "--auth-token-file", metavar="PATH", help="file holding the bearer token the HTTP listener requires"
    )
    parser.add_argument(
        "--auth-token",
        help="the bearer token itself (other local users can read it in the process list: prefer "
        "--auth-token-file or $CIRCUITBOX_AUTH_TOKEN)",
    )
    parser.add_argument("--no-metrics", action="store_true", help="collect no Prometheus metrics at all")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_token(args: argparse.Namespace) -> str | None:
    """The token from --auth-token-file, else --auth-token, else $CIRCUITBOX_AUTH_TOKEN; None when none is set.

    Raises:
        ValueError: the file cannot be read, or the token is empty or only whitespace.
    """
    source, token = None, None
    if args.auth_token_file:
        source = f"--auth-token-file {args.auth_token_file}"
        try:
            with open(args.auth_token_file, encoding="utf-8") as file:
                token = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the auth token: {source}: {exc.__class__.__name__}") from None
    elif args.auth_token is not None:
        source, token = "--auth-token", args.auth_token
    elif "CIRCUITBOX_AUTH_TOKEN" in os.environ:
        source, token = "$CIRCUITBOX_AUTH_TOKEN", os.environ["CIRCUITBOX_AUTH_TOKEN"]
    if token is None:
        return None
    token = token.strip()  # a file ends with a newline; spaces around a token are never part of it
    if not token:
        raise ValueError(f"the auth token from {source} is empty or only whitespace")
    return token


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (the OS's reason), or None; checked before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    from circuitbox.observability.logging import configure_logging

    configure_logging(args.log_format, args.log_level)
    # The HTTP client logs every request at INFO, with its URL: noise on the hot path, and URLs can carry secrets.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        token = auth_token(args)
    except ValueError as exc:
        print(f"circuitbox: {exc}", file=sys.stderr)
        return 2
    if args.transport == "http" and args.metrics_port is not None:
        print(
            "circuitbox: --metrics-port is for stdio mode; over HTTP, /metrics is served on the listener itself",
            file=sys.stderr,
        )
        return 2
    if args.transport == "http" and not is_loopback(args.host) and not token:
        print(
            f"circuitbox: refusing to listen on {args.host} without a token: set --auth-token-file, "
            "$CIRCUITBOX_AUTH_TOKEN or --auth-token (or listen on 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    from circuitbox.config.load import discover_config_path, load_config
    from circuitbox.config.secrets import mask_logs

    masked = mask_logs()  # from the first line on: the SDK logs URLs at DEBUG, errors quote headers

    def read_config() -> ProxyConfig:
        config = load_config(discover_config_path(args.config), environment=args.environment)
        for server in config.servers.values():
            masked.update(server.secrets)  # a reload adds its own; the old ones stay masked
        if config.cluster is not None:
            masked.update(config.cluster.secrets)  # redis-py's errors may quote the URL
        return config

    try:
        config = read_config()
    except ConfigError as exc:
        for problem in exc.problems:  # one line each: every problem of the file at once
            print(f"circuitbox: config error: {problem}", file=sys.stderr)
        return 2
    if config.cluster is not None:
        from circuitbox.cluster import missing_extra

        if missing := missing_extra():
            print(f"circuitbox: {missing}", file=sys.stderr)
            return 2
    if args.transport == "http" and (busy := port_in_use(args.host, args.port)):
        print(f"circuitbox: cannot listen on {args.host}:{args.port}: {busy}", file=sys.stderr)
        return 2
    import anyio

    from circuitbox.observability import traces
    from circuitbox.server.app import serve

    try:
        provider = traces.configure()
    except traces.TracingConfigError as exc:  # tracing is never worth an outage: say so and serve without it
        logging.getLogger("circuitbox").warning("traces off: %s", exc)
        provider = None
    try:
        anyio.run(
            functools.partial(
                serve,
                config,
                args.transport,
                args.host,
                args.port,
                args.metrics_port,
                token,
                metrics=not args.no_metrics,
                reload_config=read_config,
                allowed_hosts=args.allowed_host,
            )
        )
    finally:
        if provider is not None:
            provider.shutdown()  # the spans still batched are exported before the process ends
    return 0
