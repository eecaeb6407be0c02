"""Scale-out fixtures: the anyio backend and a real redis-server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.redis_process import RedisProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A redis-server of its own on a free 127.0.0.1 port, without persistence; stopped by PID afterwards."""
    server = RedisProcess(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        server.stop()
