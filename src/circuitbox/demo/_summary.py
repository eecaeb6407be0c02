"""The closing comparison: the same scenario with and without breakers, side by side."""

from __future__ import annotations

from circuitbox.demo._model import Outcome, percentile
from circuitbox.demo._plan import FAILING, HEALTHY, Timing
from circuitbox.demo._view import seconds


def _rows(on: Outcome, off: Outcome) -> list[tuple[str, str, str]]:
    def both(label: str, value: object, other: object) -> tuple[str, str, str]:
        return (label, str(value), str(other))

    def latency(q: float) -> tuple[str, str]:
        return seconds(percentile(on.seconds(), q)), seconds(percentile(off.seconds(), q))

    rows = [
        both("calls answered", len(on.calls) - on.count("no_answer"), len(off.calls) - off.count("no_answer")),
        both("  succeeded", on.count("ok"), off.count("ok")),
        both("  failed after waiting on the server", on.count("failed"), off.count("failed")),
        both("  failed fast (circuit open)", on.count("fast_fail"), off.count("fast_fail")),
        both("  never answered", on.count("no_answer"), off.count("no_answer")),
        both(f"calls the agent sent to '{FAILING}'", len(on.of(FAILING)), len(off.of(FAILING))),
        both(
            f"  of which reached '{FAILING}'",
            on.downstream_calls.get(FAILING, 0),
            off.downstream_calls.get(FAILING, 0),
        ),
        both("  downstream calls saved by fast-fail", on.saved(FAILING), off.saved(FAILING)),
        both(f"agent time lost waiting on '{FAILING}'", seconds(on.waited(FAILING)), seconds(off.waited(FAILING))),
        ("answer time p50", *latency(50)),
        ("answer time p95", *latency(95)),
        ("answer time p99", *latency(99)),
        ("worst answer time", *latency(100)),
        both(
            f"'{HEALTHY}' (healthy) success rate",
            f"{on.success_rate(HEALTHY):.0%} of {len(on.of(HEALTHY))}",
            f"{off.success_rate(HEALTHY):.0%} of {len(off.of(HEALTHY))}",
        ),
        both(
            "time to open (after the outage began)",
            seconds(on.opened_after(FAILING)),
            "never (disabled)" if not off.breakers else seconds(off.opened_after(FAILING)),
        ),
        both(
            "time to recover (after the heal)",
            seconds(on.recovered_after(FAILING)),
            seconds(off.recovered_after(FAILING)),
        ),
    ]
    return rows


def summary(on: Outcome, off: Outcome, timing: Timing, fault: str) -> list[str]:
    """The comparison table and what it means, as lines of plain text."""
    what = "hangs" if fault == "hang" else "returns errors"
    lines = [
        f"Summary: the same {timing.total:g} s scenario twice, {timing.callers} concurrent callers; every"
        f" '{FAILING}' tool {what}",
        f"from {timing.warmup:g} s to {timing.heal_at:g} s; call_timeout {timing.call_timeout:g} s, circuit opens"
        f" after 3 failures in a row, first probe after {timing.open_timeout:g} s.",
        "Without breakers = the same proxy with every breaker forced to 'disabled' (admin tool circuit_force):",
        "every call goes through to the server and waits for its answer or for call_timeout.",
        "",
        f"  {'':<42} {'with breakers':>16} {'without breakers':>18}",
    ]
    lines += [f"  {label:<42} {a:>16} {b:>18}" for label, a, b in _rows(on, off)]
    more = on.count("ok") - off.count("ok")
    done = f"{more} more" if more >= 0 else f"{-more} fewer"
    why = "" if more >= 0 else " (a circuit stays open until a probe succeeds after the heal)"
    lines += [
        "",
        f"With breakers the agent got {done} calls done{_ratio(more, off.count('ok'))}{why}, waited"
        f" {seconds(max(0.0, off.waited(FAILING) - on.waited(FAILING)))} less on the broken server, and"
        f" {on.saved(FAILING)} calls never reached it.",
    ]
    healthy_on, healthy_off = len(on.of(HEALTHY)), len(off.of(HEALTHY))
    if healthy_on > healthy_off * 1.05:
        lines.append(
            f"The healthy '{HEALTHY}' served {healthy_on} calls instead of {healthy_off}"
            f"{_ratio(healthy_on - healthy_off, healthy_off)}: callers were not stuck waiting on '{FAILING}'."
        )
    else:
        lines.append(
            f"Errors come back fast even without breakers, so the win here is the load kept off '{FAILING}'"
            " while it was down."
        )
    return lines


def _ratio(more: int, base: int) -> str:
    return f" ({more / base:+.0%})" if base else ""
