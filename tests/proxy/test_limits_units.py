"""Slots and the token bucket on their own: first come first served, waits bounded, cancellations that give back
what they took, resizing, refill on an injected clock."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from circuitbox.breakers.testing import FakeClock
from circuitbox.config.policy import RateLimitPolicy
from circuitbox.server.limits import Slots, TokenBucket, ToolLimits

pytestmark = pytest.mark.anyio


async def test_a_freed_slot_goes_to_the_longest_waiter_first() -> None:
    slots = Slots(1)
    assert slots.try_take()
    order: list[int] = []
    async with anyio.create_task_group() as tg:

        async def wait(i: int) -> None:
            assert await slots.take(60)
            order.append(i)
            slots.release()

        for i in range(3):
            tg.start_soon(wait, i)
            await anyio.wait_all_tasks_blocked()
        assert slots.waiting == 3 and not slots.try_take()  # no overtaking of the queue
        slots.release()
    assert order == [0, 1, 2] and slots.inflight == 0


async def test_a_wait_that_runs_out_gets_no_slot_and_leaves_the_queue() -> None:
    slots = Slots(1)
    assert await slots.take(0)
    assert not await slots.take(0)  # no queue_timeout: answered at once
    assert not await slots.take(0.01)
    assert slots.waiting == 0 and slots.inflight == 1


async def test_a_waiter_cancelled_before_its_turn_leaves_and_one_cancelled_once_served_passes_the_slot_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slots.take, 60)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert slots.waiting == 0 and slots.inflight == 1

    got: list[bool] = []
    tasks: list[asyncio.Task[object]] = []

    async def first() -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await slots.take(60)

    async def second() -> None:
        got.append(await slots.take(60))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            slots.release()  # handed to the first waiter...
            tasks[0].cancel()  # ...cancelled before it runs (asyncio delivers that): the slot goes on to the second
    assert got == [True] and slots.inflight == 1 and slots.waiting == 0


async def test_resizing_lets_waiters_in_at_once_and_a_lowered_cap_is_reached_as_calls_end() -> None:
    slots = Slots(1)
    assert slots.try_take()
    got: list[bool] = []
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(lambda: _append(got, slots.take(60)))
        await anyio.wait_all_tasks_blocked()
        slots.resize(3)
    assert got == [True, True] and slots.inflight == 3
    slots.resize(1)
    slots.release()
    assert slots.inflight == 2 and not slots.try_take()
    slots.release()
    assert slots.inflight == 1
    slots.release()
    assert slots.inflight == 0 and slots.try_take()


async def _append(out: list[bool], call: object) -> None:
    out.append(await call)  # type: ignore[misc]


def test_the_bucket_refills_at_its_rate_up_to_its_burst_and_reserves_tokens_ahead() -> None:
    clock = FakeClock()
    bucket = TokenBucket(RateLimitPolicy(calls=2, per=1.0, burst=3), clock)
    assert [bucket.take(0)[0] for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0) == (False, 0.5)  # the next token comes in half a second
    clock.advance(0.5)
    assert bucket.take(0) == (True, 0.0)
    clock.advance(100)
    assert bucket.tokens == 0 and [bucket.take(0)[0] for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1.0) == (True, 0.5)  # reserved: the caller waits half a second
    assert bucket.take(1.0) == (True, 1.0)  # and the next one behind it
    assert bucket.take(1.0) == (False, 1.5)
    bucket.refund()  # a reserved token given back: the next reservation is where that one was
    assert bucket.take(1.0) == (True, 1.0)


def test_a_busy_answer_suggests_retrying_after_the_recent_mean_call_duration() -> None:
    limits = ToolLimits()
    assert limits.busy_retry_after() == 1.0
    limits.finished(2.0)
    limits.finished(1.0)
    assert limits.busy_retry_after() == pytest.approx(1.8)
