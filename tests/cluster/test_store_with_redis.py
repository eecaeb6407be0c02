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
from circuitbox.cluster import ClusterStore, Record
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


async def test_a_store_that_never_reached_redis_admits_its_share_of_probes_alone() -> None:
    clock = FakeClock()
    store = ClusterStore("redis://127.0.0.1:1/0", "g", replica="alone")  # never run: not connected
    store.replicas = 3
    registry = BreakerRegistry(clock=clock)
    registry.set_store(store)
    breaker = registry.get_or_create("solo", config(timeout=1, half_open_max_calls=7))
    trip(breaker)
    clock.advance(1)
    admitted = [d for d in (breaker.acquire() for _ in range(5)) if isinstance(d, Permit)]
    assert len(admitted) == 2  # 7 // 3
    admitted[0].success()
    assert isinstance(breaker.acquire(), Permit)  # a slot of its share is free again
    assert store.status()["connected"] is False
    assert store.dirty  # what it did alone waits for Redis


async def test_redis_restarted_empty_gets_every_open_breaker_back_from_the_replicas(
    redis_server: RedisProcess,
) -> None:
    async with fleet(redis_server.url, 2) as [(first_store, first), (_, second)]:
        breakers = [first.get_or_create("kept", config(timeout=60)), second.get_or_create("kept", config(timeout=60))]
        trip(breakers[0])
        await until(lambda: breakers[1].state is S.OPEN)
        redis_server.kill()
        await until(lambda: not first_store.connected)
        await redis_server.start()
        await until(lambda: first_store.connected)
        with anyio.fail_after(10):
            while (await record_of(redis_server.url, "kept")) is None:
                await anyio.sleep(0.05)  # another process (Redis) is being written to by the stores' tasks
        record = await record_of(redis_server.url, "kept")
        assert record is not None and record["state"] == "open"


async def test_a_malformed_event_on_the_channel_is_logged_and_ignored(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with fleet(redis_server.url, 1) as [(store, _)]:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await client.publish(keys("g")["events"], "not json")
            await client.publish(keys("g")["events"], '{"name": "x"}')
        finally:
            await client.aclose()
        await until(lambda: caplog.text.count("ignoring a malformed event") == 2)
        assert store.connected


async def test_an_operator_action_wins_a_race_over_what_came_before_it_and_a_trip_wins_over_a_close() -> None:
    store = ClusterStore("redis://127.0.0.1:1/0", "g", replica="me")
    closed = Record(S.CLOSED, 4, 0, 0.0, "closed", "other", at=1_000)
    opened = Record(S.OPEN, 4, 0, 60.0, "tripped", "other", at=1_000)
    assert store.should_override("b", S.FORCED_OPEN, opened, "forced by operator", 1_000)
    assert store.should_override("b", S.CLOSED, opened, "reset by operator", 1_500)
    # A reset made before another replica's trip (say while this one could not reach Redis) does not undo it.
    assert not store.should_override("b", S.CLOSED, opened, "reset by operator", 999)
    assert store.should_override("b", S.OPEN, closed, "1 consecutive failures", 0)
    assert not store.should_override("b", S.CLOSED, opened, "2 probes succeeded", 2_000)
    assert not store.should_override("b", S.HALF_OPEN, opened, "open period elapsed", 2_000)
    assert store.should_override("b", S.OPEN, None, "anything", 0)


async def test_a_configure_from_another_replica_is_applied_and_one_that_fails_is_logged(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with fleet(redis_server.url, 2) as [(sender, _), (receiver, _)]:
        applied: list[tuple[str, str, dict[str, Any]]] = []
        receiver.on_configure = lambda server, pattern, settings: applied.append((server, pattern, settings))
        sender.on_configure = lambda *args: pytest.fail("a replica never re-applies its own change")
        sender.announce_configure("down", "*", {"failure_threshold": 1})
        await until(lambda: len(applied) == 1)
        assert applied == [("down", "*", {"failure_threshold": 1})]

        def refuse(server: str, pattern: str, settings: dict[str, Any]) -> None:
            raise KeyError(server)

        receiver.on_configure = refuse
        sender.announce_configure("elsewhere", "*", {"timeout": 5})
        await until(lambda: "could not apply replica r0's circuit_configure" in caplog.text)


async def test_probe_slots_not_used_within_their_window_go_back_to_the_fleet(redis_server: RedisProcess) -> None:
    clock = FakeClock()
    store_clock = FakeClock()
    async with anyio.create_task_group() as tg:
        store = ClusterStore(redis_server.url, "g", replica="slow", interval=0.2, clock=store_clock)
        registry = BreakerRegistry(clock=clock)
        registry.set_store(store)
        tg.start_soon(store.run)
        await until(lambda: store.connected)
        breaker = registry.get_or_create("stale", config(timeout=1, half_open_max_calls=2, half_open_timeout=4))
        trip(breaker)
        clock.advance(1)
        assert breaker.acquire().rejected  # asks for slots
        await until(lambda: len(store.tokens.get("stale", [])) == 2)
        store_clock.advance(3)  # past the window a slot may start a probe in (half of half_open_timeout, <= 1 s)
        await until(lambda: not store.tokens.get("stale"))  # the resync gave them back
        assert breaker.acquire().rejected
        await until(lambda: len(store.tokens.get("stale", [])) == 2)  # free again in Redis: granted anew
        store_clock.advance(3)
        assert breaker.acquire().rejected  # too old to start on: released at once, new ones asked for
        tg.cancel_scope.cancel()


async def test_an_event_a_replica_missed_is_repaired_by_the_resync(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from circuitbox.cluster import _link

    monkeypatch.setattr(_link.Link, "heard", lambda self, data: None)  # every replica deaf to pub/sub
    async with fleet(redis_server.url, 2) as replicas:
        breakers = [registry.get_or_create("missed", config(timeout=30)) for _, registry in replicas]
        trip(breakers[0])
        await until(lambda: breakers[1].state is S.OPEN)  # within one resync period (0.2 s here)
        assert replicas[1][0].records["missed"].by == "r0"


async def test_an_operator_action_made_while_cut_off_wins_over_what_the_fleet_did_meanwhile(
    redis_server: RedisProcess,
) -> None:
    async with fleet(redis_server.url, 1) as [(_, online)]:
        cut_off = ClusterStore(redis_server.url, "g", replica="cut-off", interval=0.2)
        registry = BreakerRegistry()
        registry.set_store(cut_off)
        mine = registry.get_or_create("race", config(timeout=30))
        theirs = online.get_or_create("race", config(timeout=30))
        trip(theirs)  # the fleet trips it (generation 1) while this replica's link is not running
        with anyio.fail_after(10):
            while (await record_of(redis_server.url, "race")) is None:
                await anyio.sleep(0.02)
        mine.force(S.FORCED_OPEN)  # what its operator did meanwhile, on a generation that is behind
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut_off.run)
            await until(lambda: theirs.state is S.FORCED_OPEN)
            tg.cancel_scope.cancel()
        record = await record_of(redis_server.url, "race")
        assert record is not None and (record["state"], record["gen"], record["by"]) == ("forced_open", 2, "cut-off")
        registry.remove("race")
        assert "race" not in cut_off.breakers
