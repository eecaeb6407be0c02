"""A real `redis-server` for the scale-out tests: a free 127.0.0.1 port, no persistence, stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


def redis_server_binary() -> str:
    """`$CIRCUITBOX_REDIS_SERVER`, else what `.ci/install-redis.sh` unpacked into .cache/, else one on PATH."""
    configured = os.environ.get("CIRCUITBOX_REDIS_SERVER")
    if configured:
        return configured
    bundled = REPO / ".cache/redis/bin/redis-server"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("redis-server")
    assert found, "run `bash .ci/install-redis.sh` to unpack redis-server into .cache/redis"
    return found


class RedisProcess:
    """One redis-server on a fixed port, which a test can kill and start again (the same port, an empty dataset)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.process is None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--loglevel",
            "warning",
        ]
        # Popen returns at once (it only forks); the wait for the port is the async part.
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # noqa: ASYNC220
        await wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the clients."""
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
