"""`circuitbox serve`: the proxy on stdio (what agent clients launch) or streamable HTTP."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
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
    parser.add_argument("--metrics-port", type=int, help="stdio mode: serve /metrics on this port")
    parser.add_argument("--environment", help="environment profile (development, staging, production, testing)")
    parser.add_argument("--auth-token", help="bearer token the HTTP listener requires (or $CIRCUITBOX_AUTH_TOKEN)")
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


def run(args: argparse.Namespace) -> int:
    from circuitbox.observability.logging import configure_logging

    configure_logging(args.log_format, args.log_level)
    # The HTTP client logs every request at INFO, with its URL: noise on the hot path, and URLs can carry secrets.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = args.auth_token or os.environ.get("CIRCUITBOX_AUTH_TOKEN") or None
    if args.transport == "http" and not is_loopback(args.host) and not token:
        print(
            f"circuitbox: refusing to listen on {args.host} without a token: set --auth-token or "
            "$CIRCUITBOX_AUTH_TOKEN (or listen on 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    from circuitbox.config.load import discover_config_path, load_config

    def read_config() -> ProxyConfig:
        return load_config(discover_config_path(args.config), environment=args.environment)

    try:
        config = read_config()
    except ConfigError as exc:
        print(f"circuitbox: config error: {exc}", file=sys.stderr)
        return 2
    import anyio

    from circuitbox.server.app import serve

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
    return 0
