"""The demo's output: a live table redrawn in place on a terminal, plain progress lines when piped."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, TextIO

from circuitbox.demo._model import ToolTally, percentile
from circuitbox.demo._plan import published

if TYPE_CHECKING:
    from circuitbox.demo._scenario import Scenario

COLOURS = {"closed": "32", "open": "31;1", "half_open": "33;1", "forced_open": "35", "disabled": "2"}
HEADER = (
    f"  {'tool':<18} {'state':<10} {'calls':>6} {'ok':>6} {'failed':>7} {'fast-fail':>10} {'p99':>8}"
    f" {'opened':>8} {'recovered':>10}"
)
EVENTS_SHOWN = 6


def seconds(value: float | None, *, sign: str = "") -> str:
    if value is None:
        return "-"
    return f"{sign}{value:.1f} s" if value >= 1 else f"{sign}{value * 1000:.0f} ms"


def row(tally: ToolTally, paint: bool) -> str:
    state = tally.state.replace("_", "-")
    shown = f"{state.upper() if tally.state != 'closed' else state:<10}"
    if paint:
        shown = f"\x1b[{COLOURS.get(tally.state, '0')}m{shown}\x1b[0m"
    p99 = seconds(percentile(tally.seconds, 99)) if tally.seconds else "-"
    return (
        f"  {published(tally.server, tally.tool):<18} {shown} {tally.calls:>6} {tally.ok:>6} {tally.failed:>7}"
        f" {tally.fast_fails:>10} {p99:>8} {seconds(tally.opened_after, sign='+'):>8}"
        f" {seconds(tally.recovered_after, sign='+'):>10}"
    )


def headline(scenario: Scenario) -> str:
    return (
        f"{scenario.label}: {scenario.now():4.1f} s of {scenario.timing.total:.0f} s, phase {scenario.phase},"
        f" {len(scenario.calls)} calls answered"
    )


class PlainView:
    """Piped output: one progress line a second and one line per event, no control codes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._next = 0.0

    def write(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def begin(self, title: str) -> None:
        self._next = 0.0
        self.write(title)

    def event(self, scenario: Scenario, at: float, text: str) -> None:
        self.write(f"  [{at:5.1f} s] {text}")

    def update(self, scenario: Scenario) -> None:
        at = scenario.now()
        if at < self._next:
            return
        self._next = at - at % 1.0 + 1.0
        servers: dict[str, list[str]] = {}
        for t in scenario.tallies.values():
            servers.setdefault(t.server, []).append(f"{t.tool}={t.state}")
        states = " | ".join(f"{server}: {' '.join(tools)}" for server, tools in servers.items())
        fast = sum(t.fast_fails for t in scenario.tallies.values())
        self.write(f"  [{at:5.1f} s] {scenario.phase:<9} {len(scenario.calls):>4} answered, {fast:>3} fast | {states}")

    def end(self, scenario: Scenario) -> None:
        self.write(f"  done: {headline(scenario)}")
        self.write(HEADER)
        for tally in scenario.tallies.values():
            self.write(row(tally, False))
        self.write()

    def close(self) -> None:
        pass


class LiveView:
    """A terminal: the table is redrawn in place (cursor up, clear below) about four times a second."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._drawn = 0

    def write(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def begin(self, title: str) -> None:
        self._drawn = 0
        self.write(f"\x1b[1m{title}\x1b[0m")
        self.out.write("\x1b[?25l")  # hide the cursor while redrawing

    def event(self, scenario: Scenario, at: float, text: str) -> None:
        pass  # events are part of the redrawn block

    def update(self, scenario: Scenario) -> None:
        lines = [headline(scenario), HEADER, *(row(t, True) for t in scenario.tallies.values()), ""]
        recent = scenario.events[-EVENTS_SHOWN:]
        lines += [f"  [{at:5.1f} s] {text}" for at, text in recent]
        lines += [""] * (EVENTS_SHOWN - len(recent))
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def end(self, scenario: Scenario) -> None:
        self.update(scenario)
        self.out.write("\x1b[?25h")
        self.write()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.out.write("\x1b[?25h")
            self.out.flush()
