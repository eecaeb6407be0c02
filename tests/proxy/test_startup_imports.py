"""`circuitbox serve` over stdio answers initialize only after its imports: what the stdio path never uses (TOML,
the config error hints, the HTTP front end, the status page, the dashboard and alert rules) must stay unimported,
and prometheus_client too until something is scraped (its registry is made then), or every agent's start pays for
it (the proxy issue's initialize goal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.net import import_path_env
from tests.proxy.harness import chaos, write_config

NOT_ON_THE_STDIO_PATH = (
    "tomllib",
    "difflib",
    "circuitbox.observability.alerts",
    "circuitbox.observability.dashboard",
    "circuitbox.observability.health",
    "circuitbox.observability.http",
    "circuitbox.observability.status_page",
    "circuitbox.observability.access",
    "circuitbox.observability._asgi_server",
    "circuitbox.server.http_lane",
    "circuitbox.server.http_sessions",
    "prometheus_client",
)

# Runs serve as the console script does; the modules loaded are read when it has ended (a superset of those loaded
# before its initialize answer), so a module imported late on the stdio path counts too.
SERVE = """
import atexit, json, sys
from circuitbox.cli import main
atexit.register(lambda: open(sys.argv[2], "w").write(json.dumps(sorted(sys.modules))))
sys.exit(main(["serve", "--config", sys.argv[1], "--log-level", "WARNING"]))
"""


def test_serve_over_stdio_imports_nothing_of_the_http_front_end_toml_or_the_config_hints(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    loaded = tmp_path / "modules.json"
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVE, str(config), str(loaded)],
        input=json.dumps(initialize) + "\n",  # then end of input: serve stops
        env={**os.environ, **import_path_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["result"]["serverInfo"]["name"] == "circuitbox"
    modules = set(json.loads(loaded.read_text()))
    assert "circuitbox.server.proxy" in modules  # the proxy did run
    # What the interpreter loads before circuitbox's first import is not circuitbox's doing: under the test
    # command's coverage, every child process starts coverage, which reads its config from pyproject.toml (tomllib).
    assert [m for m in NOT_ON_THE_STDIO_PATH if m in modules - _at_start()] == []


def _at_start() -> set[str]:
    """The modules a bare interpreter of this environment has loaded when it runs its first line."""
    listed = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sorted(sys.modules)))"],
        env={**os.environ, **import_path_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(listed.stdout))
