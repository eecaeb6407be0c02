"""The store's logic against a real redis-server: two or three stores in one process, one registry each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, CircuitState, Permit
from circuitbox.breakers.testing import FakeClock
from circuitbox.cluster import ClusterStore
from circuitbox.cluster._scripts import keys
from tests.cluster.redis_process import RedisProcess

pytestmark = pytest.mark.anyio
S = CircuitState


@asynccontextmanager
async def fleet(
    url: str, count: int, group: str = "g", clock: FakeClock | None = None, prefix: str = "r"
) -> AsyncIterator[list[tuple[ClusterStore, BreakerRegistry]]]:
    """`count` replicas in one process: a registry each (on `clock`), with a store linked to the same Redis group."""
    replicas = []
    async with anyio.create_task_group() as tg:
        for i in range(count):
            store = ClusterStore(url, group, replica=f"{prefix}{i}", interval=0.2)
            registry = BreakerRegistry(clock=clock)
            registry.set_store(store)
            tg.start_soon(store.run)
            replicas.append((store, registry))
        await until(lambda: all(store.connected for store, _ in replicas))
        yield replicas
        tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool], limit: float = 10) -> None:
    """Until `condition()` holds; the stores work in their own tasks, so there is nothing to await but time."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.01)


def config(**settings: Any) -> CircuitBreakerConfig:
    settings.setdefault("failure_threshold", 1)
    settings.setdefault("jitter", 0.0)
    return CircuitBreakerConfig(**settings)


def trip(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    assert isinstance(permit, Permit)
    permit.failure("transport", "refused")


async def record_of(url: str, name: str, group: str = "g") -> dict[str, Any] | None:
    import json

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        text = await client.hget(keys(group)["state"], name)
    finally:
        await client.aclose()
    return json.loads(text) if text else None


async def test_a_trip_on_one_replica_opens_the_breaker_on_the_others_with_the_same_open_period(
    redis_server: RedisProcess,
) -> None:
    async with fleet(redis_server.url, 3) as replicas:
        breakers = [registry.get_or_create("svc__tool", config(timeout=30)) for _, registry in replicas]
        trip(breakers[0])
        await until(lambda: all(b.state is S.OPEN for b in breakers))
        remaining = [b.open_remaining() for b in breakers]
        assert all(r is not None and 29 < r <= 30 for r in remaining), remaining
        record = await record_of(redis_server.url, "svc__tool")
        assert record is not None
        assert (record["state"], record["gen"], record["by"]) == ("open", 1, "r0")
        breakers[1].reset()
        await until(lambda: all(b.state is S.CLOSED for b in breakers))


async def test_a_breaker_created_later_takes_the_fleet_state_at_once(redis_server: RedisProcess) -> None:
    async with fleet(redis_server.url, 2) as [(_, first), (second_store, second)]:
        trip(first.get_or_create("late", config(timeout=30)))
        await until(lambda: "late" in second_store.records)
        assert second.get_or_create("late", config(timeout=30)).state is S.OPEN


async def test_two_replicas_tripping_at_the_same_moment_make_one_transition_in_redis(
    redis_server: RedisProcess,
) -> None:
    async with fleet(redis_server.url, 2) as replicas:
        breakers = [registry.get_or_create("both", config(timeout=30)) for _, registry in replicas]
        for breaker in breakers:  # both trip before either store has talked to Redis
            trip(breaker)
        await until(lambda: all(store.records.get("both") is not None for store, _ in replicas))
        await until(lambda: all(not store.dirty for store, _ in replicas))
        record = await record_of(redis_server.url, "both")
        assert record is not None
        assert (record["state"], record["gen"]) == ("open", 1)
        ends = [b.open_remaining() or 0 for b in breakers]
        assert abs(ends[0] - ends[1]) < 0.5  # the loser took the winner's open period


async def admit_from(breakers: list[CircuitBreaker], count: int) -> list[Permit]:
    """Ask every replica for probes until `count` are admitted in all (the stores lease slots meanwhile)."""
    admitted: list[Permit] = []
    with anyio.fail_after(10):
        while len(admitted) < count:
            for breaker in breakers:
                decision = breaker.acquire()
                if isinstance(decision, Permit):
                    admitted.append(decision)
            await anyio.sleep(0.01)
    return admitted


async def test_half_open_admits_at_most_half_open_max_calls_probes_across_the_fleet(
    redis_server: RedisProcess,
) -> None:
    clock = FakeClock()
    async with fleet(redis_server.url, 3, clock=clock) as replicas:
        breakers = [
            registry.get_or_create("probe", config(timeout=30, half_open_max_calls=2, half_open_timeout=30))
            for _, registry in replicas
        ]
        trip(breakers[0])
        await until(lambda: all(b.state is S.OPEN for b in breakers))
        clock.advance(30)
        admitted = await admit_from(breakers, 2)
        for _ in range(20):  # more tries, from every replica, while their stores ask Redis: both slots are taken
            for breaker in breakers:
                assert breaker.acquire().rejected
            await anyio.sleep(0.02)
        assert len(admitted) == 2
        admitted[0].success()  # a slot comes back: one more probe somewhere in the fleet
        [third] = await admit_from(breakers, 1)
        third.failure("timeout")  # a probe fails: the whole fleet reopens, with the longer period
        await until(lambda: all(b.state is S.OPEN for b in breakers))
        assert all(55 < (b.open_remaining() or 0) <= 60 for b in breakers)


async def test_probes_that_succeed_close_the_breaker_on_every_replica(redis_server: RedisProcess) -> None:
    clock = FakeClock()
    async with fleet(redis_server.url, 2, clock=clock) as replicas:
        breakers = [
            registry.get_or_create("heal", config(timeout=5, success_threshold=2, half_open_max_calls=1))
            for _, registry in replicas
        ]
        trip(breakers[1])
        await until(lambda: all(b.state is S.OPEN for b in breakers))
        clock.advance(5)
        for _ in range(2):  # successes count where the probes ran (here: replica 0); the close is fleet-wide
            [probe] = await admit_from(breakers[:1], 1)
            probe.success()
        await until(lambda: all(b.state is S.CLOSED for b in breakers))
        record = await record_of(redis_server.url, "heal")
        assert record is not None
        assert record["state"] == "closed"


async def test_a_replica_that_dies_holding_a_probe_slot_frees_it_after_half_open_timeout(
    redis_server: RedisProcess,
) -> None:
    clock = FakeClock()
    async with fleet(redis_server.url, 1, clock=clock) as [(_, survivor)]:
        async with fleet(redis_server.url, 1, clock=clock, prefix="doomed") as [(_, doomed)]:
            settings = config(timeout=5, half_open_max_calls=1, half_open_timeout=0.5, call_timeout=0.5)
            mortal = doomed.get_or_create("lease", settings)
            kept = survivor.get_or_create("lease", settings)
            trip(mortal)
            await until(lambda: kept.state is S.OPEN)
            clock.advance(5)
            await admit_from([mortal], 1)  # holds the only slot, then its process "dies": no release
        assert kept.acquire().rejected
        [probe] = await admit_from([kept], 1)  # once the slot's PX ran out (half_open_timeout)
        probe.success()
