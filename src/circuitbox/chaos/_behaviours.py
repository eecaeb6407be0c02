"""Behaviours: what a chaos tool does when called, parsed from `KIND[:ARG...]` and resolved per call.

A configured behaviour may be random or time-dependent (`fail`, `flapping`, a latency range);
`resolve` turns it, given an RNG and the time, into the concrete behaviour of one call. Keeping that
pure makes it testable without a server or a real clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal, cast, get_args

Kind = Literal[
    "healthy",
    "add",
    "error",
    "protocol_error",
    "latency",
    "hang",
    "crash",
    "garbage",
    "flapping",
    "fail",
    "fail_first",
    "progress",
    "flood",
]
Fault = Literal["error", "protocol_error", "hang", "crash"]
Then = Literal["answer", "hang", "exit"]

KINDS: tuple[str, ...] = get_args(Kind)
FAULTS: tuple[str, ...] = get_args(Fault)
THENS: tuple[str, ...] = get_args(Then)

SYNTAX = """\
healthy                    echo the arguments (text + structuredContent)
add                        healthy; sums arguments a and b, with an outputSchema
error[:MESSAGE]            isError result (default text: "... service unavailable")
protocol_error[:CODE]      JSON-RPC error, default -32603
latency:S | latency:A-B    answer after S seconds, or uniformly A..B seconds (seeded)
hang                       never answer (until cancelled)
crash[:EXIT]               the process exits at once (os._exit), default status 1
garbage[:THEN[:LINES]]     write LINES (3) non-JSON lines to stdout (stdio), THEN answer|hang|exit (answer)
flapping:DOWN:UP[:FAULT]   FAULT (error) for DOWN s, healthy for UP s, repeating; clock starts when set
fail:P[:FAULT]             FAULT (error) with probability P, else healthy (seeded)
fail_first:N[:FAULT]       FAULT (error) for the first N calls after it is set, then healthy
progress[:N[:INTERVAL]]    N (3) progress notifications INTERVAL (0) s apart, then answer
flood[:N[:BYTES]]          N (1000) notifications/message of BYTES (100) at once, then answer"""


class BehaviourError(ValueError):
    """A behaviour spec that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One tool's behaviour. Only the fields its `kind` uses matter; `spec` is its canonical text."""

    kind: Kind
    spec: str
    seconds: tuple[float, float] = (0.0, 0.0)
    """latency range (equal ends: fixed); progress: (interval, interval)."""
    probability: float = 0.0
    down: float = 0.0
    up: float = 0.0
    fault: Fault = "error"
    code: int = -32603
    """protocol_error: the JSON-RPC code; crash: the exit status."""
    message: str = ""
    then: Then = "answer"
    count: int = 3
    """garbage: lines written; progress, flood: notifications sent; fail_first: calls that fail."""
    size: int = 100
    """flood: bytes of each log message's data."""


def _float(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BehaviourError(f"{spec!r}: {what} must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise BehaviourError(f"{spec!r}: {what} must be a finite number >= 0, got {text!r}")
    return value


def _int(text: str, what: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BehaviourError(f"{spec!r}: {what} must be an integer, got {text!r}") from None


def _choice(text: str, allowed: tuple[str, ...], what: str, spec: str) -> str:
    if text not in allowed:
        raise BehaviourError(f"{spec!r}: {what} must be one of {', '.join(allowed)}, got {text!r}")
    return text


def _arity(args: list[str], low: int, high: int, spec: str) -> None:
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise BehaviourError(f"{spec!r}: expected {want} argument(s) after the kind, got {len(args)}")


def parse_behaviour(spec: str) -> Behaviour:
    """Parse `KIND[:ARG...]` (see `SYNTAX`).

    Raises:
        BehaviourError: unknown kind, wrong number of arguments or a bad value.
    """
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise BehaviourError(f"{spec!r}: unknown behaviour {kind!r}; known: {', '.join(KINDS)}")
    if kind == "error":  # the message is free text and may itself contain colons
        return Behaviour("error", spec, message=rest)
    args = rest.split(":") if rest else []
    b = Behaviour(cast(Kind, kind), spec)
    if kind in ("healthy", "add", "hang"):
        _arity(args, 0, 0, spec)
    elif kind == "protocol_error":
        _arity(args, 0, 1, spec)
        b = replace(b, code=_int(args[0], "CODE", spec)) if args else b
    elif kind == "crash":
        _arity(args, 0, 1, spec)
        b = replace(b, code=_int(args[0], "EXIT", spec) if args else 1)
    elif kind == "latency":
        _arity(args, 1, 1, spec)
        low, sep, high = args[0].partition("-")
        lo = _float(low, "seconds", spec)
        hi = _float(high, "seconds", spec) if sep else lo
        if hi < lo:
            raise BehaviourError(f"{spec!r}: the range must go from low to high")
        b = replace(b, seconds=(lo, hi))
    elif kind == "garbage":
        _arity(args, 0, 2, spec)
        then = cast(Then, _choice(args[0], THENS, "THEN", spec)) if args else "answer"
        count = _int(args[1], "LINES", spec) if len(args) > 1 else 3
        b = replace(b, then=then, count=max(count, 0))
    elif kind == "flapping":
        _arity(args, 2, 3, spec)
        down, up = _float(args[0], "DOWN", spec), _float(args[1], "UP", spec)
        if down + up <= 0:
            raise BehaviourError(f"{spec!r}: DOWN + UP must be > 0")
        fault = cast(Fault, _choice(args[2], FAULTS, "FAULT", spec)) if len(args) > 2 else "error"
        b = replace(b, down=down, up=up, fault=fault)
    elif kind == "fail":
        _arity(args, 1, 2, spec)
        p = _float(args[0], "P", spec)
        if p > 1:
            raise BehaviourError(f"{spec!r}: P must be between 0 and 1")
        fault = cast(Fault, _choice(args[1], FAULTS, "FAULT", spec)) if len(args) > 1 else "error"
        b = replace(b, probability=p, fault=fault)
    elif kind == "fail_first":
        _arity(args, 1, 2, spec)
        failing = _int(args[0], "N", spec)
        fault = cast(Fault, _choice(args[1], FAULTS, "FAULT", spec)) if len(args) > 1 else "error"
        b = replace(b, count=max(failing, 0), fault=fault)
    elif kind == "flood":
        _arity(args, 0, 2, spec)
        count = _int(args[0], "N", spec) if args else 1000
        size = _int(args[1], "BYTES", spec) if len(args) > 1 else 100
        b = replace(b, count=max(count, 0), size=max(size, 0))
    else:  # progress
        _arity(args, 0, 2, spec)
        steps = _int(args[0], "N", spec) if args else 3
        interval = _float(args[1], "INTERVAL", spec) if len(args) > 1 else 0.0
        b = replace(b, count=max(steps, 0), seconds=(interval, interval))
    return b


def parse_tool(text: str) -> tuple[str, Behaviour]:
    """Parse `NAME=KIND[:ARG...]`.

    Raises:
        BehaviourError: no `=`, an empty name, or a bad behaviour.
    """
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise BehaviourError(f"{text!r}: expected NAME=BEHAVIOUR, e.g. slow=latency:0.5")
    return name, parse_behaviour(spec)


def resolve(b: Behaviour, rng: random.Random, elapsed: float, nth: int = 1) -> Behaviour:
    """The concrete behaviour of one call; `elapsed` is the seconds since `b` was set, `nth` the call's number
    since then (1 for the first).

    The result's kind is never `fail`, `fail_first` or `flapping`, and a latency has a fixed delay.
    """
    if b.kind == "fail_first":
        return fault(b.fault) if nth <= b.count else HEALTHY
    if b.kind == "fail":
        return fault(b.fault) if rng.random() < b.probability else HEALTHY
    if b.kind == "flapping":
        return fault(b.fault) if elapsed % (b.down + b.up) < b.down else HEALTHY
    if b.kind == "latency" and b.seconds[0] != b.seconds[1]:
        delay = rng.uniform(*b.seconds)
        return replace(b, seconds=(delay, delay))
    return b


def fault(kind: Fault) -> Behaviour:
    """The plain behaviour for a fault name."""
    return parse_behaviour(kind)


HEALTHY = Behaviour("healthy", "healthy")

DEFAULT_TOOLS: dict[str, str] = {
    "echo": "healthy",
    "add": "add",
    "slow": "latency:0.5",
    "flaky": "fail:0.5",
    "boom": "error:injected failure",
    "broken": "protocol_error",
    "hang": "hang",
    "crash": "crash",
    "garbage": "garbage",
    "wobble": "flapping:5:5",
    "progress": "progress:3:0.05",
}
"""The tool set served when no `--tool` or `--spec` is given."""
