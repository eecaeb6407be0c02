"""Loopback helpers shared by the tests that start real servers."""

from __future__ import annotations

import os
import socket

import anyio


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, limit: float = 30) -> None:
    """Until something accepts connections on 127.0.0.1:`port` (a server process we started); bounded."""
    with anyio.fail_after(limit):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)  # polling another process's socket: there is nothing to wait on instead
                continue
            await stream.aclose()
            return


def import_path_env() -> dict[str, str]:
    """`PYTHONPATH` as the test run has it, for child processes started with a minimal environment (the SDK's stdio
    client and circuitbox's own downstreams pass only a safe default set), so they import the same `circuitbox`."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}
