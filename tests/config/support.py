"""Helpers shared by the config and policy tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from circuitbox.config.load import ProxyConfig, parse_config

REPO = Path(__file__).resolve().parents[2]


def one(entry: dict[str, Any] | None = None, name: str = "srv", **top: Any) -> ProxyConfig:
    """A config with one server `name` (a stdio server unless `entry` says otherwise)."""
    data = {"environment": "production", "mcpServers": {name: entry or {"command": "some-server"}}} | top
    return parse_config(data, env={})


def time_server() -> dict[str, Any]:
    exe = shutil.which("mcp-server-time")
    if exe:
        return {"command": exe, "args": ["--local-timezone", "UTC"]}
    return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "circuitbox.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def check(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m circuitbox check ...` as a real process."""
    base = {k: v for k, v in os.environ.items() if k not in ("CIRCUITBOX_ENV", "ENVIRONMENT", "CIRCUITBOX_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "circuitbox", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=base | (env or {}),
        check=False,
    )
