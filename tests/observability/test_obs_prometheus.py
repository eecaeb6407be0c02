"""promtool and a real Prometheus server against our rules, dashboard and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest

from circuitbox.breakers.testing import FakeClock
from circuitbox.cli import main as cli_main
from circuitbox.observability import build_dashboard, build_rules, to_yaml
from tests.net import free_port

from .obs_support import collector_with, make_breaker, scrape, serving, taking, trip

pytestmark = pytest.mark.anyio


def test_promtool_accepts_the_alert_rules_the_cli_prints(
    promtool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["alerts", "--failure-rate", "0.4", "--health", "0.6", "--open-margin", "30"]) == 0
    rules = tmp_path / "rules.yml"
    rules.write_text(capsys.readouterr().out)
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    text = rules.read_text()
    assert "> 0.4" in text and "< 0.6" in text and "+ 30)" in text


def test_every_alert_rule_has_a_for_duration_a_severity_and_a_summary() -> None:
    for rule in build_rules()["groups"][0]["rules"]:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_the_dashboard_cli_prints_an_importable_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["dashboard"]) == 0
    dash = json.loads(capsys.readouterr().out)
    assert dash["uid"] and dash["schemaVersion"] >= 36 and dash["id"] is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["server"]["type"] == variables["tool"]["type"] == "query"
    titles = " | ".join(p["title"] for p in dash["panels"])
    for needed in (
        "state",
        "Request rate",
        "Failure rate",
        "p50 / p95 / p99",
        "Health",
        "transitions",
        "Fallback",
    ):
        assert needed in titles
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["expr"] for t in panel["targets"])


async def test_promtool_accepts_a_scrape_of_the_metrics_endpoint(promtool: str) -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    await trip(breaker, clock)
    async with serving(collector.registry) as url:
        text = (await scrape(url)).text
    with anyio.fail_after(60):
        check = await anyio.run_process([promtool, "check", "metrics"], input=text.encode(), check=False)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def dashboard_queries() -> Iterator[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables replaced as Grafana would."""
    dash = build_dashboard()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for variable in dash["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), \w+\)", str(variable.get("query", "")))
        if match:  # label_values(SELECTOR, label) asks the series API; the selector itself must be valid
            yield match.group(1)


def grafana(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$server", ".*").replace("$tool", ".*")


async def _query(client: httpx2.AsyncClient, base: str, expr: str) -> dict[str, Any]:
    response = await client.get(f"{base}/api/v1/query", params={"query": expr})
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body


async def test_a_real_prometheus_scrapes_a_tripped_breaker_and_evaluates_every_dashboard_and_alert_query(
    prometheus: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    healthy = make_breaker("s3__get", clock)
    collector = collector_with(breaker, healthy)
    collector.bind("docker__ps", server="docker", tool="ps")
    collector.bind("s3__get", server="s3", tool="get")
    await trip(breaker, clock)
    await healthy.call(taking, clock, 0.2)
    breaker.record_fallback()
    rules = tmp_path / "rules.yml"
    rules.write_text(to_yaml(build_rules()))

    async with serving(collector.registry) as url:
        target = url.removeprefix("http://").removesuffix("/metrics")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n  - job_name: circuitbox\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "prometheus.log"
        command = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        with log_path.open("wb") as log:
            process = await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        async with process, httpx2.AsyncClient(timeout=5) as client:
            try:
                state = await _poll(client, base, process, log_path, 'circuit_breaker_state{server="docker",tool="ps"}')
                assert float(state[0]["value"][1]) == 1

                for expr in [*dashboard_queries(), *_alert_exprs()]:
                    await _query(client, base, grafana(expr))
                timeline = await _query(client, base, grafana(next(dashboard_queries())))
                assert timeline["data"]["result"], "the first dashboard query returned no series"

                # Prometheus evaluates the rules itself: the open circuit shows up as a pending/firing alert.
                alert = await _poll(
                    client, base, process, log_path, 'ALERTS{alertname="CircuitBreakerOpen",server="docker"}'
                )
                assert alert[0]["metric"]["tool"] == "ps"
                rules_seen = await _evaluated_rules(client, base)
                assert {r["name"]: (r["health"], r.get("lastError", "")) for r in rules_seen} == {
                    r["alert"]: ("ok", "") for r in build_rules()["groups"][0]["rules"]
                }
            finally:
                process.terminate()
                with anyio.fail_after(30):
                    await process.wait()


async def _evaluated_rules(client: httpx2.AsyncClient, base: str) -> list[dict[str, Any]]:
    """The loaded rules once Prometheus has evaluated each of them at least once."""
    with anyio.fail_after(30):
        while True:
            groups = (await client.get(f"{base}/api/v1/rules")).json()["data"]["groups"]
            rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
            if rules and all(r["health"] != "unknown" for r in rules):
                return rules
            await anyio.sleep(0.2)


def _alert_exprs() -> list[str]:
    return [rule["expr"] for group in build_rules()["groups"] for rule in group["rules"]]


async def _poll(
    client: httpx2.AsyncClient, base: str, process: anyio.abc.Process, log: Path, query: str
) -> list[dict[str, Any]]:
    """Ask Prometheus' query API until `query` has a result (it scrapes and evaluates every second)."""
    with anyio.fail_after(60):
        while True:
            if process.returncode is not None:
                output = await anyio.Path(log).read_text()
                pytest.fail(f"prometheus exited with {process.returncode}:\n{output}")
            try:
                response = await client.get(f"{base}/api/v1/query", params={"query": query})
                result: list[dict[str, Any]] = response.json()["data"]["result"] if response.status_code == 200 else []
            except httpx2.TransportError:  # not listening yet
                result = []
            if result:
                return result
            await anyio.sleep(0.2)
