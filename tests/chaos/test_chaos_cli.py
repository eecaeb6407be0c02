"""The `circuitbox chaos` flags, and the pieces of the stdio transport that can run in this process."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

import circuitbox.chaos
from circuitbox.chaos import DEFAULT_TOOLS
from circuitbox.chaos._transport import _LockedText, _StdioWire
from circuitbox.cli import main
from circuitbox.commands.chaos import add_arguments, hints_from_args, tools_from_args

pytestmark = pytest.mark.anyio


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_no_tool_flags_serve_the_default_tool_set_unseeded() -> None:
    tools, seed = tools_from_args(parse())
    assert list(tools) == list(DEFAULT_TOOLS) and seed is None
    assert {tools["hang"].kind, tools["flaky"].kind} == {"hang", "fail"}


def test_tool_flags_override_a_json_spec_and_seed_overrides_its_seed(tmp_path: Path) -> None:
    spec = {"seed": 3, "tools": {"echo": "healthy", "slow": "latency:1"}}
    tools, seed = tools_from_args(parse("--spec", json.dumps(spec), "--tool", "slow=hang"))
    assert ({n: b.spec for n, b in tools.items()}, seed) == ({"echo": "healthy", "slow": "hang"}, 3)
    path = tmp_path / "chaos.json"
    path.write_text(json.dumps(spec))
    tools, seed = tools_from_args(parse("--spec", str(path), "--seed", "9"))
    assert (list(tools), seed) == (["echo", "slow"], 9)


def test_read_only_and_idempotent_flags_give_tools_their_hints() -> None:
    hints = hints_from_args(parse("--read-only", "get", "--idempotent", "get", "--idempotent", "put"))
    assert hints == {"get": frozenset({"readOnly", "idempotent"}), "put": frozenset({"idempotent"})}


def test_help_lists_the_behaviour_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["chaos", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "flapping:DOWN:UP[:FAULT]" in out and "--transport {stdio,http}" in out


def test_build_server_is_exported_lazily() -> None:
    assert callable(circuitbox.chaos.build_server)
    with pytest.raises(AttributeError):
        _ = circuitbox.chaos.nothing_here


async def test_garbage_lines_are_written_whole_to_the_wire() -> None:
    buffer = io.BytesIO()
    out = _LockedText(buffer)
    out.write('{"jsonrpc": "2.0"}\n')
    out.flush()
    await _StdioWire(out).write_lines(["junk 1", "junk 2"])
    assert buffer.getvalue().decode().splitlines() == ['{"jsonrpc": "2.0"}', "junk 1", "junk 2"]
