"""`circuitbox demo` end to end: run as a user would (a real process), piped, in quick mode."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from typing import cast

import anyio
import pytest
from mcp import ClientSession

from circuitbox.demo._model import Call, Outcome, ToolTally, percentile
from circuitbox.demo._plan import FAILING, HEALTHY, QUICK
from circuitbox.demo._scenario import Scenario
from circuitbox.demo._summary import summary
from circuitbox.demo._view import LiveView, PlainView

pytestmark = pytest.mark.anyio


async def test_the_quick_demo_piped_exits_0_without_control_codes_and_ends_with_the_comparison() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color"}
    with anyio.fail_after(90):
        done = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "demo", "--quick", "--seed", "3"],
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "\x1b" not in out and "\r" not in out  # piped: plain lines only
    assert "Run 1 of 2: with breakers" in out and "Run 2 of 2: without breakers" in out
    assert f"{FAILING}__query OPEN" in out and "outage healed" in out
    summary_at = out.index("Summary:")
    table = out[summary_at:]
    for label in ("calls answered", "downstream calls saved by fast-fail", "answer time p99", "worst answer time"):
        assert label in table
    saved = re.search(r"downstream calls saved by fast-fail\s+(\d+)\s+(\d+)", table)
    assert saved is not None and int(saved.group(1)) > 0 and int(saved.group(2)) == 0
    healthy = re.search(rf"'{HEALTHY}' \(healthy\) success rate\s+100% of \d+\s+100% of \d+", table)
    assert healthy is not None, table


def outcome(breakers: bool, calls: list[Call], reached: int) -> Outcome:
    tallies = {(c.server, c.tool): ToolTally(c.server, c.tool) for c in calls}
    for call in calls:
        tallies[(call.server, call.tool)].add(call)
    label = "with breakers" if breakers else "without breakers"
    return Outcome(label, breakers, calls, tallies, {FAILING: reached, HEALTHY: 0}, [], 10.0)


def test_the_summary_counts_saved_calls_from_the_downstreams_own_counters() -> None:
    on = outcome(
        True,
        [
            Call(FAILING, "query", 1.0, 1.5, "failed"),
            Call(FAILING, "query", 2.0, 0.002, "fast_fail"),
            Call(FAILING, "query", 2.1, 0.002, "fast_fail"),
            Call(HEALTHY, "forecast", 2.2, 0.004, "ok"),
        ],
        reached=1,
    )
    off = outcome(False, [Call(FAILING, "query", 1.0, 1.5, "failed"), Call(FAILING, "query", 2.6, 1.5, "failed")], 2)
    assert on.saved(FAILING) == 2 and off.saved(FAILING) == 0
    assert on.waited(FAILING) == 1.5 and off.waited(FAILING) == 3.0
    text = "\n".join(summary(on, off, QUICK, "hang"))
    assert re.search(r"downstream calls saved by fast-fail\s+2\s+0", text)
    assert re.search(r"failed fast \(circuit open\)\s+2\s+0", text)
    assert "worst answer time" in text and "1.5 s" in text


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 99) == 0.0 and percentile([3.0], 1) == 3.0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def scenario(view: LiveView | PlainView) -> Scenario:
    session = cast(ClientSession, None)  # rendering never touches the session
    s = Scenario(session, QUICK, seed=1, breakers=True, fault="hang", view=view)
    s._record(Call(FAILING, "query", 0.1, 0.6, "failed"))
    s.outage_at = 0.0
    s._record(Call(FAILING, "query", 0.8, 0.001, "fast_fail"))
    s._state_seen(s.tallies[(FAILING, "query")], "open")
    return s


def test_on_a_terminal_the_table_is_redrawn_in_place_and_when_piped_only_plain_lines_are_written() -> None:
    terminal = Terminal()
    live = LiveView(terminal)
    s = scenario(live)
    live.update(s)
    live.update(s)
    drawn = terminal.getvalue()
    assert re.search(r"\x1b\[\d+F\x1b\[J", drawn)  # cursor up over the previous frame, clear below
    assert "OPEN" in drawn and "\x1b[31;1m" in drawn  # an open circuit in red

    piped = io.StringIO()
    plain = PlainView(piped)
    s = scenario(plain)
    plain.update(s)
    plain.end(s)
    text = piped.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert f"{FAILING}__query OPEN" in text and "search: query=open" in text
