"""Running the chaos server over stdio or streamable HTTP."""

from __future__ import annotations

import io
import logging
import os
import threading
from typing import Any

import anyio

from circuitbox.chaos._server import ChaosServer, Wire, build_server
from circuitbox.chaos._state import ChaosState

logger = logging.getLogger("circuitbox.chaos")


class _LockedText(io.TextIOWrapper):
    """The protocol's stdout, shared by the SDK's writer and the garbage behaviour.

    Every write is a whole line under a lock, so a garbage line never lands inside a JSON-RPC message.
    """

    def __init__(self, buffer: Any) -> None:
        super().__init__(buffer, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def flush(self) -> None:
        with self._lock:
            super().flush()

    def write_flush(self, text: str) -> None:
        with self._lock:
            super().write(text)
            super().flush()


class _StdioWire:
    def __init__(self, out: _LockedText) -> None:
        self._out = out

    async def write_lines(self, lines: list[str]) -> None:
        await anyio.to_thread.run_sync(self._out.write_flush, "".join(f"{line}\n" for line in lines))


def _claim_stdout() -> _LockedText:
    """Take fd 1 for the protocol and point fd 1 at stderr, so stray prints cannot corrupt the wire.

    The SDK's stdio_server does the same when it owns stdout; we own it because garbage must reach the wire.
    """
    wire_fd = os.dup(1)
    os.dup2(2, 1)
    return _LockedText(os.fdopen(wire_fd, "wb"))


async def serve_stdio(state: ChaosState, *, name: str) -> None:
    """Serve until stdin closes."""
    from mcp.server.stdio import stdio_server

    out = _claim_stdout()
    server = build_server(state, _StdioWire(out), name=name)
    logger.info("chaos: serving %d tools over stdio", len(state.tools))
    async with stdio_server(stdout=anyio.wrap_file(out)) as (read, write):
        await server.run(read, write, server.create_initialization_options())


def http_app(server: ChaosServer, host: str) -> Any:
    """The Starlette app serving MCP at /mcp."""
    return server.streamable_http_app(streamable_http_path="/mcp", host=host)


async def serve_http(state: ChaosState, *, name: str, host: str, port: int) -> None:
    """Serve streamable HTTP at http://host:port/mcp until cancelled."""
    import uvicorn

    server = build_server(state, None, name=name)
    # log_config=None keeps uvicorn on our stderr logging (its default sends access logs to stdout).
    config = uvicorn.Config(http_app(server, host), host=host, port=port, log_config=None, access_log=False)
    logger.info("chaos: serving %d tools at http://%s:%d/mcp", len(state.tools), host, port)
    await uvicorn.Server(config).serve()


__all__ = ["Wire", "serve_http", "serve_stdio"]
