"""`circuitbox serve` with a bad config file: exit 2, the key and the problem named, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

CASES = [
    ("unknown.json", '{"mcpServers": {"a": {"command": "x", "brekaer": {}}}}', "mcpServers.a.brekaer"),
    (
        "type.json",
        '{"mcpServers": {"a": {"command": "x", "breaker": {"failure_threshold": "many"}}}}',
        "failure_threshold",
    ),
    ("unset.json", '{"mcpServers": {"a": {"command": "${CIRCUITBOX_TEST_UNSET_VAR}"}}}', "CIRCUITBOX_TEST_UNSET_VAR"),
    ("broken.json", '{"mcpServers": {"a": {"command": "x",}}', "line 1"),
    ("broken.toml", '[mcpServers.a]\ncommand = "x\n', "line"),
    ("empty.json", '{"mcpServers": {}}', "mcpServers"),
]


@pytest.mark.parametrize("name,text,named", CASES, ids=[case[0] for case in CASES])
async def test_serve_refuses_a_bad_config_with_exit_2_and_names_the_key(
    tmp_path: Path, name: str, text: str, named: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    done = await anyio.run_process(
        [sys.executable, "-m", "circuitbox", "serve", "--config", str(path)], check=False, stdin=None
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "config error" in stderr and named in stderr
    assert "Traceback" not in stderr
    assert done.stdout == b""  # stdout is the protocol channel: nothing but MCP goes there
