"""The demo from start to end: start the proxy, run the scenario with and without breakers, print the summary."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from circuitbox.demo import broken_pipe
from circuitbox.demo._model import Outcome
from circuitbox.demo._plan import FAILING, HEALTHY, TOOLS, Timing, proxy_config, published
from circuitbox.demo._scenario import Scenario, tool_call
from circuitbox.demo._summary import summary
from circuitbox.demo._view import LiveView, PlainView

START_LIMIT = 60.0
"""Seconds the proxy and both downstreams get to start (a Python MCP server needs one to three)."""


async def demo(timing: Timing, seed: int, fault: str, out: TextIO) -> int:
    """Run the whole demo, writing to `out` (live redraw when it is a terminal); 0 if everything held up."""
    view: LiveView | PlainView = LiveView(out) if out.isatty() else PlainView(out)
    with tempfile.TemporaryDirectory(prefix="circuitbox-demo-") as tmp:
        try:
            outcomes = await _both_runs(Path(tmp), timing, seed, fault, view)
        except Exception as exc:
            if broken_pipe(exc):
                raise
            view.write(f"circuitbox demo: failed: {_describe(exc)}")
            log = Path(tmp) / "proxy.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.exists() else []
            if tail:
                view.write("last lines of the proxy's log:\n  " + "\n  ".join(tail))
            return 1
        finally:
            view.close()  # the cursor comes back even on Ctrl-C
    on, off = outcomes
    for line in summary(on, off, timing, fault):
        view.write(line)
    problems = [f"{o.label}: {o.count('no_answer')} calls never answered" for o in outcomes if o.count("no_answer")]
    problems += [
        f"{o.label}: '{HEALTHY}' succeeded for only {o.success_rate(HEALTHY):.1%} of its calls"
        for o in outcomes
        if o.success_rate(HEALTHY) < 1
    ]
    for problem in problems:
        view.write(f"unexpected: {problem}")
    return 1 if problems else 0


async def _both_runs(tmp: Path, timing: Timing, seed: int, fault: str, view: LiveView | PlainView) -> list[Outcome]:
    config = tmp / "circuitbox.json"
    config.write_text(json.dumps(proxy_config(timing, seed), indent=1))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "circuitbox", "serve", "--config", str(config), "--log-level", "WARNING"],
        cwd=str(tmp),
    )
    view.write(
        f"circuitbox demo: circuitbox (a child process over stdio) in front of two chaos MCP servers, '{FAILING}'"
        f" and '{HEALTHY}'.\n{timing.callers} scripted callers call their tools while '{FAILING}' breaks and heals.\n"
        "Columns: fast-fail = answered by an open circuit without touching the server; opened = from the outage's"
        " start\nto the open circuit; recovered = from the heal to healthy again. Starting...\n"
    )
    outcomes: list[Outcome] = []
    with (tmp / "proxy.log").open("w") as log:
        async with (
            stdio_client(params, errlog=log) as (read, write),
            ClientSession(read, write, read_timeout_seconds=timing.call_timeout + 30) as session,
        ):
            with anyio.fail_after(START_LIMIT):
                await session.initialize()
                await _wait_connected(session)
            for number, breakers in enumerate((True, False), start=1):
                await _prepare(session, breakers)
                scenario = Scenario(session, timing, seed=seed, breakers=breakers, fault=fault, view=view)
                view.begin(f"Run {number} of 2: {scenario.label}")
                try:
                    outcomes.append(await scenario.run())
                finally:
                    view.end(scenario)
            with anyio.fail_after(10):
                await tool_call(session, "circuit_status", {})  # still answering after all that
    return outcomes


async def _wait_connected(session: ClientSession) -> None:
    while True:
        status = await tool_call(session, "circuit_status", {})
        connected = {row["server"] for row in status.get("servers", []) if row.get("connection") == "connected"}
        if set(TOOLS) <= connected:
            return
        await anyio.sleep(0.1)


async def _prepare(session: ClientSession, breakers: bool) -> None:
    """Fresh counters and behaviours on both downstreams; breakers back to normal, or all forced to `disabled`."""
    for server in TOOLS:
        await tool_call(session, published(server, "chaos_control"), {"action": "reset"})
        await tool_call(session, "circuit_force", {"server": server, "state": "auto" if breakers else "disabled"})


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
