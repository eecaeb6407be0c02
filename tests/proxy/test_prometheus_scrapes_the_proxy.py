"""A real Prometheus scrapes a real proxy (stdio mode, `metrics.port`) and sees the tripped breaker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.net import free_port
from tests.observability.conftest import _find
from tests.observability.test_obs_prometheus import _poll
from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


async def test_prometheus_reads_state_1_for_a_breaker_the_proxy_opened(tmp_path: Path) -> None:
    metrics_port = free_port()
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 2, "timeout": 600, "jitter": 0}}
    config = {"metrics": {"port": metrics_port}, "mcpServers": {"c": server}}
    async with proxy_session(tmp_path, config) as session:
        await session.call_tool("c__ok", {})
        for _ in range(3):
            await session.call_tool("c__bad", {})
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: circuitbox\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        port = free_port()
        command = [
            _find("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        log_path = tmp_path / "prometheus.log"
        with log_path.open("wb") as log:
            process = await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        async with process, httpx2.AsyncClient(timeout=5) as client:
            try:
                base = f"http://127.0.0.1:{port}"
                bad = await _poll(client, base, process, log_path, 'circuit_breaker_state{server="c",tool="bad"}')
                ok = await _poll(client, base, process, log_path, 'circuit_breaker_state{server="c",tool="ok"}')
                rejected = await _poll(
                    client, base, process, log_path, 'circuit_breaker_requests_total{tool="bad",result="rejected"}'
                )
            finally:
                process.terminate()
                with anyio.fail_after(30):
                    await process.wait()
    assert float(bad[0]["value"][1]) == 1
    assert float(ok[0]["value"][1]) == 0
    assert float(rejected[0]["value"][1]) == 1
