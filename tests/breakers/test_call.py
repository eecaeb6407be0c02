from __future__ import annotations

import logging

import anyio
import pytest

from circuitbox.breakers import (
    CallFailed,
    CallIgnored,
    CallSucceeded,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    FallbackUsed,
    Permit,
    StateTransition,
)
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder, make

pytestmark = pytest.mark.anyio
S = CircuitState


class Boom(Exception):
    """The guarded operation failed."""


async def ok(value: str = "ok") -> str:
    return value


async def boom() -> str:
    raise Boom("downstream said no")


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(Boom):
            await breaker.call(boom)
    assert breaker.state is S.OPEN


async def test_call_returns_the_result_and_records_a_success(clock: FakeClock) -> None:
    breaker = make(clock)
    assert await breaker.call(ok, "fine") == "fine"
    assert await breaker.call(ok, value="kw") == "kw"
    assert breaker.snapshot().successes == 2


async def test_call_records_an_exception_as_a_failure_and_reraises_it(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=3)
    await trip(breaker)
    assert [e.kind for e in events.of(CallFailed)] == ["exception"] * 3
    assert breaker.snapshot().last_error == "Boom: downstream said no"


async def test_a_timeout_error_is_recorded_with_kind_timeout(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events)

    async def slow() -> None:
        raise TimeoutError("took too long")

    with pytest.raises(TimeoutError):
        await breaker.call(slow)
    assert events.of(CallFailed)[0].kind == "timeout"


async def test_a_rejected_call_raises_a_fresh_circuit_open_error_with_the_facts(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, timeout=30)
    await trip(breaker)
    clock.advance(5)
    errors = []
    for _ in range(2):
        with pytest.raises(CircuitOpenError) as caught:
            await breaker.call(ok)
        errors.append(caught.value)
    first, second = errors
    assert first is not second  # never a stored instance re-raised: no traceback growth
    assert (first.breaker, first.state, first.retry_after) == ("svc", S.OPEN, 25)
    assert first.last_error == "Boom: downstream said no"
    assert str(first) == "circuit 'svc' is open (retry in 25s); last error: Boom: downstream said no"


async def test_a_forced_open_circuit_open_error_says_so(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.force(S.FORCED_OPEN)
    with pytest.raises(CircuitOpenError, match=r"^circuit 'svc' is forced_open \(forced open\)$") as caught:
        await breaker.call(ok)
    assert caught.value.retry_after is None and caught.value.last_error is None


async def test_a_sync_fallback_answers_a_rejected_call(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=1, fallback=lambda: {"status": "unavailable"})
    with pytest.raises(Boom):
        await breaker.call(boom)  # a fallback is for rejections, not for ordinary failures
    assert await breaker.call(ok) == {"status": "unavailable"}
    assert len(events.of(FallbackUsed)) == 1


async def test_an_async_fallback_is_awaited(clock: FakeClock) -> None:
    async def cached() -> str:
        return "cached"

    breaker = make(clock, failure_threshold=1, fallback=cached)
    await trip(breaker)
    assert await breaker.call(ok) == "cached"


async def test_record_fallback_emits_fallback_used_only_to_listeners(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.record_fallback()  # no listener: nothing to build
    events = Recorder()
    breaker.add_listener(events)
    clock.advance(2)
    breaker.record_fallback()
    assert events.events == [FallbackUsed("svc", 2)]


async def test_excluded_exceptions_are_ignored_and_reraised(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=1, excluded_exceptions=(KeyError,))

    async def missing() -> None:
        raise KeyError("no such item")

    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(missing)
    assert breaker.state is S.CLOSED and breaker.snapshot().calls == 0
    assert len(events.of(CallIgnored)) == 3


async def test_the_decorator_guards_an_async_function_and_keeps_its_name(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    @breaker
    async def fetch(item: str, *, times: int = 1) -> str:
        """Fetch an item."""
        if item == "bad":
            raise Boom(item)
        return item * times

    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch an item."
    assert await fetch("a", times=3) == "aaa"
    with pytest.raises(Boom):
        await fetch("bad")
    with pytest.raises(CircuitOpenError):
        await fetch("a")


def test_the_decorator_refuses_a_sync_function(clock: FakeClock) -> None:
    breaker = make(clock)
    with pytest.raises(TypeError, match="guards async functions"):
        breaker(lambda: None)  # type: ignore[arg-type, return-value]


async def test_a_listener_that_raises_is_logged_and_the_call_still_works(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    events = Recorder()
    breaker = make(clock, failure_threshold=1)
    breaker.add_listener(broken)
    breaker.add_listener(events)
    with caplog.at_level(logging.ERROR, logger="circuitbox.breakers"):
        assert await breaker.call(ok) == "ok"
        with pytest.raises(Boom):
            await breaker.call(boom)
    assert breaker.state is S.OPEN
    assert len(events.events) == 3  # the others still got every event
    assert [r.name for r in caplog.records] == ["circuitbox.breakers"] * 3
    assert "listener bug" in caplog.text and "CallSucceeded" in caplog.text


async def test_a_listener_is_added_once_and_can_be_removed(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock)
    breaker.add_listener(events)
    breaker.add_listener(events)
    await breaker.call(ok)
    breaker.remove_listener(events)
    breaker.remove_listener(events)  # removing twice is harmless
    await breaker.call(ok)
    assert len(events.events) == 1


async def test_a_cancelled_call_releases_its_permit(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1, success_threshold=1)
    await trip(breaker)
    clock.advance(60)
    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, hang)
        with anyio.fail_after(5):
            await started.wait()
        assert breaker.acquire().rejected  # the one probe slot is taken
        tg.cancel_scope.cancel()
    assert breaker.state is S.HALF_OPEN  # a cancelled probe neither closes nor reopens
    assert await breaker.call(ok) == "ok"  # its slot was freed
    assert breaker.state is S.CLOSED


async def test_a_probe_through_call_records_failure_and_exclusion(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1, excluded_exceptions=(KeyError,))
    await trip(breaker)
    clock.advance(60)

    async def missing() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await breaker.call(missing)
    assert breaker.state is S.HALF_OPEN
    with pytest.raises(Boom):
        await breaker.call(boom)
    assert breaker.state is S.OPEN


@pytest.mark.parametrize("state", [S.METRICS_ONLY, S.DISABLED])
async def test_call_in_an_operator_state_passes_and_reports_every_outcome(clock: FakeClock, state: S) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, excluded_exceptions=(KeyError,))
    breaker.force(state)

    async def missing() -> None:
        raise KeyError("x")

    assert await breaker.call(ok) == "ok"
    with pytest.raises(Boom):
        await breaker.call(boom)
    with pytest.raises(KeyError):
        await breaker.call(missing)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await breaker.call(anyio.sleep, 1)
    assert [type(e).__name__ for e in events.events[1:]] == ["CallSucceeded", "CallFailed", "CallIgnored"]
    assert breaker.snapshot().calls == (2 if state is S.METRICS_ONLY else 0)


async def test_a_call_whose_state_ended_meanwhile_changes_nothing(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    started, finish = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await finish.wait()
        return "late"

    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, slow)
        with anyio.fail_after(5):
            await started.wait()
        breaker.force(S.METRICS_ONLY)
        finish.set()
    assert breaker.snapshot().calls == 0


async def test_1000_tasks_racing_into_half_open_let_exactly_half_open_max_calls_through(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=1, half_open_max_calls=3, success_threshold=3)
    await trip(breaker)
    clock.advance(60)
    gate, release, decided = anyio.Event(), anyio.Event(), anyio.Event()
    counts = {"reached": 0, "rejected": 0}

    def settle() -> None:
        if counts["reached"] + counts["rejected"] == 1000:
            decided.set()

    async def probe() -> str:
        counts["reached"] += 1
        settle()
        await release.wait()
        return "ok"

    async def racer() -> None:
        await gate.wait()
        try:
            await breaker.call(probe)
        except CircuitOpenError:
            counts["rejected"] += 1
            settle()

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(racer)
        gate.set()
        with anyio.fail_after(10):
            await decided.wait()
        assert counts == {"reached": 3, "rejected": 997}
        release.set()
    assert breaker.state is S.CLOSED


async def test_ten_slow_calls_through_one_closed_breaker_run_concurrently(clock: FakeClock) -> None:
    breaker = make(clock)
    order: list[str] = []
    all_started = anyio.Event()

    async def slow(i: int) -> int:
        order.append(f"start {i}")
        if len(order) == 10:
            all_started.set()
        with anyio.fail_after(5):
            await all_started.wait()  # would never return if the breaker serialized calls
        order.append(f"end {i}")
        return i

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(breaker.call, slow, i)
    assert all(entry.startswith("start") for entry in order[:10])
    assert breaker.snapshot().successes == 10


def test_ten_slow_calls_take_one_second_not_ten_on_trio_virtual_time() -> None:
    import trio
    import trio.testing

    events = Recorder()

    async def main() -> float:
        # the breaker runs on trio's clock here, so durations are virtual too
        config = CircuitBreakerConfig(slow_call_duration=0.5, minimum_calls=20)
        breaker = CircuitBreaker(config, clock=trio.current_time)
        breaker.add_listener(events)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(breaker.call, trio.sleep, 1)
        return trio.current_time()

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 1.0
    succeeded = events.of(CallSucceeded)
    assert [(e.duration, e.slow) for e in succeeded] == [(1.0, True)] * 10


async def test_transition_events_carry_the_reason(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=2)
    await trip(breaker)
    [transition] = events.of(StateTransition)
    assert (transition.from_state, transition.to_state, transition.reason) == (
        S.CLOSED,
        S.OPEN,
        "2 consecutive failures",
    )


async def test_acquire_gives_a_permit_even_in_an_async_context(clock: FakeClock) -> None:
    assert isinstance(make(clock).acquire(), Permit)


def test_a_circuit_open_error_can_be_built_with_keywords_and_pickled() -> None:
    import pickle

    error = CircuitOpenError(breaker="svc", state=S.OPEN, retry_after=1.5)
    assert (error.breaker, error.state, error.retry_after, error.last_error) == ("svc", S.OPEN, 1.5, None)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.breaker, copy.retry_after) == ("svc", 1.5)
    positional = CircuitOpenError("svc", S.HALF_OPEN, 2.0, "boom")
    assert positional.args == ("svc", S.HALF_OPEN, 2.0, "boom")
