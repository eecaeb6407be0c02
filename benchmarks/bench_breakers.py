"""Overhead of circuitbox.breakers against the Python breakers people use, on the same no-op.

    python benchmarks/bench_breakers.py [--quick] [--rounds N] [--calls N]

Everything runs in one process and one asyncio loop. Each round runs every contender once, in a shuffled order,
so drift (turbo, other load) spreads over all of them; the table shows the median over rounds of the time per
call, and the overhead is that minus the bare call of the same kind (async `await noop()`, or sync `noop()`).
pybreaker's `call_async` needs tornado, so pybreaker is measured with its sync `call` against a sync baseline.
purgatory's open breaker is rebuilt (untimed) for every run: it re-raises one stored exception whose traceback
grows with every rejection, so it would otherwise get slower round after round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiobreaker
import circuitbreaker as fabfuel
import purgatory
import pybreaker

from circuitbox.breakers import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)

Runner = Callable[[int], Awaitable[int]]  # runs n calls, returns elapsed nanoseconds
HOUR = 3600.0


class Boom(Exception):
    """Used to trip the breakers for the open path."""


async def noop() -> None:
    return None


async def boom() -> None:
    raise Boom


def sync_noop() -> None:
    return None


def sync_boom() -> None:
    raise Boom


@dataclass
class Contender:
    name: str
    path: str  # "closed" or "open"
    kind: str  # "async" or "sync": which bare call it is compared with
    run: Runner
    note: str = ""


# -- ours ---------------------------------------------------------------------------------------------------


def ours(*, fallback: bool = False) -> CircuitBreaker:
    config = CircuitBreakerConfig(
        name="bench", timeout=HOUR, max_timeout=HOUR, fallback=(lambda: None) if fallback else None
    )
    return CircuitBreaker(config)


async def tripped(breaker: CircuitBreaker) -> CircuitBreaker:
    for _ in range(breaker.config.failure_threshold):
        with contextlib.suppress(Boom):
            await breaker.call(boom)
    assert breaker.state is CircuitState.OPEN
    return breaker


def bare_async() -> Runner:
    async def run(n: int) -> int:
        t = time.perf_counter_ns()
        for _ in range(n):
            await noop()
        return time.perf_counter_ns() - t

    return run


def bare_sync() -> Runner:
    async def run(n: int) -> int:
        t = time.perf_counter_ns()
        for _ in range(n):
            sync_noop()
        return time.perf_counter_ns() - t

    return run


def ours_call(breaker: CircuitBreaker) -> Runner:
    async def run(n: int) -> int:
        call = breaker.call
        t = time.perf_counter_ns()
        for _ in range(n):
            await call(noop)
        return time.perf_counter_ns() - t

    return run


def ours_call_rejected(breaker: CircuitBreaker) -> Runner:
    async def run(n: int) -> int:
        call = breaker.call
        t = time.perf_counter_ns()
        for _ in range(n):
            try:  # noqa: SIM105 - contextlib.suppress would add its own cost to what is measured
                await call(noop)
            except CircuitOpenError:
                pass
        return time.perf_counter_ns() - t

    return run


def ours_decorated(breaker: CircuitBreaker) -> Runner:
    guarded = breaker(noop)

    async def run(n: int) -> int:
        t = time.perf_counter_ns()
        for _ in range(n):
            await guarded()
        return time.perf_counter_ns() - t

    return run


def ours_permit(breaker: CircuitBreaker) -> Runner:
    async def run(n: int) -> int:
        acquire = breaker.acquire
        t = time.perf_counter_ns()
        for _ in range(n):
            permit = acquire()
            if permit.rejected:
                continue
            await noop()
            permit.success()  # type: ignore[union-attr]
        return time.perf_counter_ns() - t

    return run


def ours_permit_sync(breaker: CircuitBreaker) -> Runner:
    async def run(n: int) -> int:
        acquire = breaker.acquire
        t = time.perf_counter_ns()
        for _ in range(n):
            permit = acquire()
            if permit.rejected:
                continue
            sync_noop()
            permit.success()  # type: ignore[union-attr]
        return time.perf_counter_ns() - t

    return run


# -- peers --------------------------------------------------------------------------------------------------


async def expect_raise(fn: Callable[[], Awaitable[Any]], error: type[BaseException]) -> None:
    try:
        await fn()
    except error:
        return
    raise AssertionError(f"expected {error.__name__}")


def peer_async(fn: Callable[[], Awaitable[Any]], error: type[BaseException] | None = None) -> Runner:
    """n awaits of `fn()`; with `error`, each call is expected to raise it (a rejection)."""
    if error is None:

        async def run(n: int) -> int:
            t = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            return time.perf_counter_ns() - t

        return run

    async def run_rejected(n: int) -> int:
        t = time.perf_counter_ns()
        for _ in range(n):
            try:  # noqa: SIM105 - as above
                await fn()
            except error:
                pass
        return time.perf_counter_ns() - t

    return run_rejected


def peer_sync(fn: Callable[[], Any], error: type[BaseException] | None = None) -> Runner:
    if error is None:

        async def run(n: int) -> int:
            t = time.perf_counter_ns()
            for _ in range(n):
                fn()
            return time.perf_counter_ns() - t

        return run

    async def run_rejected(n: int) -> int:
        t = time.perf_counter_ns()
        for _ in range(n):
            try:  # noqa: SIM105 - as above
                fn()
            except error:
                pass
        return time.perf_counter_ns() - t

    return run_rejected


async def aiobreaker_pair() -> tuple[Runner, Runner]:
    closed = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=HOUR))
    opened = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=HOUR))
    for _ in range(5):
        await expect_raise(lambda: opened.call_async(boom), Exception)
    await expect_raise(lambda: opened.call_async(noop), aiobreaker.CircuitBreakerError)
    return (
        peer_async(lambda: closed.call_async(noop)),
        peer_async(lambda: opened.call_async(noop), aiobreaker.CircuitBreakerError),
    )


async def purgatory_pair() -> tuple[Runner, Runner]:
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=HOUR)
    await factory.initialize()

    @factory("closed")
    async def closed() -> None:
        return None

    async def tripped_purgatory() -> Callable[[], Awaitable[None]]:
        # purgatory re-raises one stored OpenedState, whose traceback grows by a few frames per rejection (the
        # bug circuitbox avoids), so each round gets a fresh open breaker or it would slow down round by round.
        opened_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=HOUR)
        await opened_factory.initialize()

        @opened_factory("opened")
        async def opened(fail: bool = False) -> None:
            if fail:
                raise Boom

        for _ in range(5):
            await expect_raise(lambda: opened(True), Boom)
        await expect_raise(opened, purgatory.domain.model.OpenedState)
        return opened

    async def run_open(n: int) -> int:
        return await peer_async(await tripped_purgatory(), purgatory.domain.model.OpenedState)(n)

    return peer_async(closed), run_open


async def fabfuel_pair() -> tuple[Runner, Runner]:
    @fabfuel.circuit(failure_threshold=5, recovery_timeout=HOUR)
    async def closed() -> None:
        return None

    @fabfuel.circuit(failure_threshold=5, recovery_timeout=HOUR, expected_exception=Boom)
    async def opened(fail: bool = False) -> None:
        if fail:
            raise Boom

    for _ in range(5):
        await expect_raise(lambda: opened(True), Boom)
    await expect_raise(opened, fabfuel.CircuitBreakerError)
    return peer_async(closed), peer_async(opened, fabfuel.CircuitBreakerError)


def pybreaker_pair() -> tuple[Runner, Runner]:
    closed = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=HOUR)
    opened = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=HOUR)
    for _ in range(5):
        with contextlib.suppress(Boom, pybreaker.CircuitBreakerError):
            opened.call(sync_boom)
    assert opened.current_state == "open"
    return (
        peer_sync(lambda: closed.call(sync_noop)),
        peer_sync(lambda: opened.call(sync_noop), pybreaker.CircuitBreakerError),
    )


async def contenders() -> list[Contender]:
    listened = ours()
    listened.add_listener(lambda event: None)
    aio_closed, aio_open = await aiobreaker_pair()
    purg_closed, purg_open = await purgatory_pair()
    fab_closed, fab_open = await fabfuel_pair()
    py_closed, py_open = pybreaker_pair()
    return [
        Contender("bare `await noop()`", "closed", "async", bare_async()),
        Contender("bare `noop()`", "closed", "sync", bare_sync()),
        Contender("circuitbox `call()`", "closed", "async", ours_call(ours())),
        Contender("circuitbox `@breaker`", "closed", "async", ours_decorated(ours())),
        Contender("circuitbox `call()` + 1 listener", "closed", "async", ours_call(listened)),
        Contender("circuitbox permit", "closed", "async", ours_permit(ours())),
        Contender("circuitbox permit (sync fn)", "closed", "sync", ours_permit_sync(ours())),
        Contender("aiobreaker `call_async`", "closed", "async", aio_closed),
        Contender("purgatory (in-memory) decorator", "closed", "async", purg_closed),
        Contender("circuitbreaker (fabfuel) decorator", "closed", "async", fab_closed),
        Contender("pybreaker `call` (sync)", "closed", "sync", py_closed, "sync: call_async needs tornado"),
        Contender(
            "circuitbox `call()`, raises CircuitOpenError", "open", "async", ours_call_rejected(await tripped(ours()))
        ),
        Contender("circuitbox `call()` + fallback", "open", "async", ours_call(await tripped(ours(fallback=True)))),
        Contender("circuitbox permit (Rejection value)", "open", "async", ours_permit(await tripped(ours()))),
        Contender("aiobreaker `call_async`", "open", "async", aio_open),
        Contender("purgatory (in-memory) decorator", "open", "async", purg_open),
        Contender("circuitbreaker (fabfuel) decorator", "open", "async", fab_open),
        Contender("pybreaker `call` (sync)", "open", "sync", py_open, "sync"),
    ]


# -- measuring ----------------------------------------------------------------------------------------------


async def measure(entries: list[Contender], rounds: int, calls: int) -> dict[int, float]:
    """Median ns per call of each contender (by index) over `rounds` interleaved, shuffled rounds."""
    samples: dict[int, list[float]] = {i: [] for i in range(len(entries))}
    order = list(range(len(entries)))
    rng = random.Random(20261129)
    for i in order:  # warm-up: caches, specialisation, lazily built state
        await entries[i].run(max(calls // 10, 100))
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            gc.collect()
            samples[i].append(await entries[i].run(calls) / calls)
    return {i: statistics.median(values) for i, values in samples.items()}


def memory_of_breakers(count: int = 10_000, window: int = 100) -> tuple[float, float]:
    """(MB through a registry with a name each, MB of bare breakers sharing one config)."""
    config = CircuitBreakerConfig(sliding_window_size=window)
    gc.collect()
    tracemalloc.start()
    registry = BreakerRegistry()
    for i in range(count):
        registry.get_or_create(f"server{i // 20}__tool{i % 20}", config)
    via_registry = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del registry
    gc.collect()
    tracemalloc.start()
    kept = [CircuitBreaker(config) for _ in range(count)]
    bare = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del kept
    return via_registry, bare


def report(entries: list[Contender], medians: dict[int, float], rounds: int, calls: int) -> bool:
    base = {e.kind: medians[i] for i, e in enumerate(entries) if e.name.startswith("bare")}  # async and sync baselines
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}; "
        f"{rounds} rounds x {calls:,} calls per contender, medians.\n"
    )
    print("| contender | path | ns per call | overhead vs bare (ns) |")
    print("|---|---|---:|---:|")
    over: dict[tuple[str, str], float] = {}
    for i, e in enumerate(entries):
        ns = medians[i]
        extra = ns - base[e.kind]
        over[(e.name, e.path)] = extra
        shown = "—" if e.name.startswith("bare") else f"{extra:,.0f}"
        note = f" ({e.note})" if e.note else ""
        print(f"| {e.name}{note} | {e.path} | {ns:,.0f} | {shown} |")

    peers = ["aiobreaker `call_async`", "purgatory (in-memory) decorator", "circuitbreaker (fabfuel) decorator"]
    fastest_peer = min(peers, key=lambda p: over[(p, "closed")])
    ours_closed = over[("circuitbox `call()`", "closed")]
    permit = over[("circuitbox permit", "closed")]
    via_registry, bare_mb = memory_of_breakers()
    goals = [
        (
            f"closed-path overhead of `call()` <= half the fastest async peer's ({fastest_peer}: "
            f"{over[(fastest_peer, 'closed')]:,.0f} ns)",
            f"{ours_closed:,.0f} ns = {ours_closed / over[(fastest_peer, 'closed')]:.2f}x",
            ours_closed <= over[(fastest_peer, "closed")] / 2,
        ),
        ("permit protocol overhead < 500 ns", f"{permit:,.0f} ns", permit < 500),
        (
            "permit: a rejection is cheaper than a closed call",
            f"{over[('circuitbox permit (Rejection value)', 'open')]:,.0f} vs {permit:,.0f} ns",
            over[("circuitbox permit (Rejection value)", "open")] < permit,
        ),
        (
            "`call()` with a fallback: a rejection is cheaper than a closed call",
            f"{over[('circuitbox `call()` + fallback', 'open')]:,.0f} vs {ours_closed:,.0f} ns",
            over[("circuitbox `call()` + fallback", "open")] < ours_closed,
        ),
        (
            "`call()` raising CircuitOpenError vs a closed call (exceptions cost; information only)",
            f"{over[('circuitbox `call()`, raises CircuitOpenError', 'open')]:,.0f} vs {ours_closed:,.0f} ns",
            None,
        ),
        (
            "10,000 breakers (count window of 100) < 20 MB",
            f"{via_registry:.1f} MB via a registry (named), {bare_mb:.1f} MB bare (shared config)",
            via_registry < 20,
        ),
    ]
    print("\n| goal | measured | met |")
    print("|---|---|---|")
    for goal, measured, met in goals:
        verdict = "—" if met is None else ("yes" if met else "**no**")
        print(f"| {goal} | {measured} | {verdict} |")
    return all(met is not False for _, _, met in goals)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rounds x 2,000 calls (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 15, quick 5)")
    parser.add_argument("--calls", type=int, help="calls per contender per round (default 20,000, quick 2,000)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    calls = args.calls or (2_000 if args.quick else 20_000)
    entries = await contenders()
    medians = await measure(entries, rounds, calls)
    return 0 if report(entries, medians, rounds, calls) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
