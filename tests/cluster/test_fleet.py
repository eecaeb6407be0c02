"""Replicas of `circuitbox serve --transport http` as real processes in front of one faulty downstream (the
bundled chaos server), sharing their breakers through a real redis-server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from circuitbox.cluster._scripts import keys
from tests.cluster.fleet import (
    GROUP,
    ChaosServer,
    Replica,
    breaker_meta,
    chaos_http,
    eventually,
    fleet,
    replica,
    replica_config,
)
from tests.cluster.redis_process import RedisProcess

pytestmark = pytest.mark.anyio


async def fleet_record(redis_url: str, name: str = "down__work") -> dict[str, object] | None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        text = await client.hget(keys(GROUP)["state"], name)
    finally:
        await client.aclose()
    return json.loads(text) if text else None


async def state_of(r: Replica) -> str:
    return str((await r.breaker())["state"])


async def test_an_outage_tripped_through_one_replica_makes_every_other_fail_fast_within_a_second(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy", "late=error") as down:
        config = replica_config(redis_server.url, down.url, failure_threshold=2, timeout=60)
        async with fleet(tmp_path, 3, config) as replicas:
            for r in replicas:  # every replica has served the tool: its breaker exists, closed
                assert not (await r.call()).is_error
            await down.set("work", "error")
            for _ in range(2):
                assert (await replicas[0].call()).is_error
            opened = [(await r.breaker())["opened_at"] for r in replicas[:1]]
            assert opened[0] is not None
            for r in replicas[1:]:
                await eventually(lambda r=r: _is_open(r))
                opened.append((await r.breaker())["opened_at"])
            # opened_at is each process's monotonic clock, one clock on one host: the propagation delay itself
            delays = [at - opened[0] for at in opened[1:]]
            assert all(0 <= d < 1.0 for d in delays), delays
            before = (await down.stats("work"))["calls"]
            for r in replicas[1:]:
                answer = await r.call()
                assert answer.is_error
                meta = breaker_meta(answer)
                assert meta is not None and meta["state"] == "open", answer
            assert (await down.stats("work"))["calls"] == before  # they failed fast: nothing reached the server
            status = await replicas[2].status()
            assert status["cluster"]["connected"] is True
            assert status["cluster"]["group"] == GROUP
            for r in replicas:  # each counts the fleet at its own heartbeat (every second)
                await eventually(lambda r=r: _sees_replicas(r, 3))
            assert "circuitbox_cluster_connected 1.0" in await replicas[1].metrics()
            shown = await anyio.run_process([sys.executable, "-m", "circuitbox", "status", "--url", replicas[1].url])
            assert f"CLUSTER group {GROUP!r}: connected to {redis_server.url}, 3 replicas" in shown.stdout.decode()
            record = await fleet_record(redis_server.url)
            assert record is not None and record["state"] == "open" and record["gen"] == 1
            # A tool a replica has never called: its breaker, created by its first call, starts in the fleet's state.
            for _ in range(2):
                assert (await replicas[0].call("late")).is_error
            await eventually(lambda: fleet_record(redis_server.url, "down__late"))
            first_call = await replicas[1].call("late")
            meta = breaker_meta(first_call)
            assert meta is not None and meta["state"] == "open", first_call
            assert (await down.stats("late"))["calls"] == 2


async def _sees_replicas(r: Replica, count: int) -> bool:
    return bool((await r.status())["cluster"]["replicas"] == count)


async def _is_open(r: Replica) -> bool:
    return await state_of(r) == "open"


async def test_three_hundred_calls_into_half_open_across_three_replicas_reach_the_downstream_at_most_max_probes_times(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(
            redis_server.url, down.url, failure_threshold=1, timeout=1, half_open_max_calls=2, call_timeout=300
        )
        config["shutdown_timeout"] = 0  # the probes still hanging at the end need not delay the replicas' exit
        async with fleet(tmp_path, 3, config) as replicas:
            for r in replicas:
                assert not (await r.call()).is_error
            await down.set("work", "error")
            assert (await replicas[0].call()).is_error
            for r in replicas:
                await eventually(lambda r=r: _is_open(r))
            await down.set("work", "hang")  # the probes stay in flight for the whole test, however slow it runs
            before = (await down.stats("work"))["calls"]
            await eventually(lambda: _none_open(replicas))  # the open period is over
            answered = [0]

            async def one(r: Replica) -> None:
                await r.call()
                answered[0] += 1

            async def settled(started: int) -> dict[str, Any] | None:
                """The downstream's counters once every call of the waves is answered or in flight there."""
                stats = await down.stats("work")
                return stats if answered[0] + stats["in_flight"] >= started else None

            started, reached, waves_after = 0, 0, 0
            async with anyio.create_task_group() as tg:  # the probes never answer: they are cancelled here
                while waves_after < 2:  # until the fleet let probes through, then two more waves
                    for _ in range(100):
                        for r in replicas:
                            tg.start_soon(one, r)
                    started += 300
                    stats = await eventually(lambda started=started: settled(started), limit=60)
                    reached = stats["calls"] - before
                    assert reached <= 2, (stats, [(await r.status())["cluster"] for r in replicas])
                    waves_after += 1 if reached else 0
                tg.cancel_scope.cancel()
            assert 1 <= reached <= 2
            assert answered[0] >= started - 2


async def _none_open(replicas: list[Replica]) -> bool:
    for r in replicas:
        row = await r.breaker()
        if row["state"] == "open" and (row["retry_after"] or 0) > 0:
            return False
    return True


async def test_a_replica_killed_while_holding_a_probe_lease_frees_it_after_half_open_timeout(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(
            redis_server.url, down.url, failure_threshold=1, timeout=1, half_open_max_calls=1, call_timeout=3
        )
        async with replica(tmp_path, "survivor", config) as survivor:
            async with replica(tmp_path, "doomed", config) as doomed:
                for r in (survivor, doomed):
                    assert not (await r.call()).is_error
                await down.set("work", "error")
                assert (await doomed.call()).is_error
                await eventually(lambda: _is_open(survivor))
                await down.set("work", "hang")
                await eventually(lambda: _none_open([survivor, doomed]))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_keep_probing, doomed)  # until one call is the probe, hanging in the server
                    await eventually(lambda: _in_flight(down, 1))
                    await down.set("work", "healthy")
                    answer = await survivor.call()
                    assert answer.is_error  # the fleet's only slot is the doomed replica's
                    doomed.kill()
                    tg.cancel_scope.cancel()

            # Its lease lives half_open_timeout (3 s) from the probe's start; then the survivor probes and heals.
            async def healed() -> bool:
                return not (await survivor.call()).is_error

            await eventually(healed)


async def _keep_probing(r: Replica) -> None:
    while True:
        await r.call()


async def _in_flight(down: ChaosServer, count: int) -> bool:
    return bool((await down.stats("work"))["in_flight"] >= count)


async def test_two_replicas_tripping_at_the_same_moment_make_one_transition(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(redis_server.url, down.url, failure_threshold=1, timeout=60, call_timeout=3)
        async with fleet(tmp_path, 2, config) as replicas:
            for r in replicas:
                assert not (await r.call()).is_error
            await down.set("work", "hang")
            async with anyio.create_task_group() as tg:  # both calls in flight, both time out after 3 s
                for r in replicas:
                    tg.start_soon(r.call)
            assert (await down.stats("work"))["calls"] == 4  # both failures reached the server: both tripped
            for r in replicas:
                await eventually(lambda r=r: _is_open(r))
            record = await fleet_record(redis_server.url)
            assert record is not None
            assert (record["state"], record["gen"]) == ("open", 1)  # one transition in Redis, not two
            ends = [(await r.breaker())["retry_after"] for r in replicas]
            assert abs(ends[0] - ends[1]) < 1.0  # and one open period


async def test_redis_killed_mid_load_leaves_every_call_answered_and_status_says_so_then_resyncs(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(redis_server.url, down.url, failure_threshold=2, timeout=60)
        async with fleet(tmp_path, 2, config) as replicas:
            answers: list[bool] = []

            async def load(r: Replica) -> None:
                while True:
                    answers.append((await r.call()).is_error)

            async with anyio.create_task_group() as tg:
                for r in replicas:
                    tg.start_soon(load, r)
                await eventually(lambda: _answered(answers, 20))
                redis_server.kill()
                for r in replicas:
                    await eventually(lambda r=r: _cluster_is(r, False))
                seen = len(answers)
                await eventually(lambda: _answered(answers, seen + 20))  # calls go on without Redis
                tg.cancel_scope.cancel()
            assert not any(answers)  # every call answered, and answered well
            assert "circuitbox_cluster_connected 0.0" in await replicas[0].metrics()
            status = (await replicas[1].status())["cluster"]
            assert status["connected"] is False and status["last_error"]
            shown = await anyio.run_process([sys.executable, "-m", "circuitbox", "status", "--url", replicas[1].url])
            assert f"Redis {redis_server.url} unreachable (" in shown.stdout.decode()
            alone = await replicas[1].admin("circuit_reset", {"server": "down", "tool": "work"})
            assert "on this replica only for now: Redis is unreachable" in str(alone.content[0])
            # Alone, replica 0 trips: replica 1 does not hear of it...
            await down.set("work", "error")
            for _ in range(2):
                assert (await replicas[0].call()).is_error
            assert await state_of(replicas[0]) == "open"
            assert await state_of(replicas[1]) == "closed"
            # ...until Redis is back (empty: no persistence): replica 0 publishes what it holds, replica 1 takes it.
            await redis_server.start()
            for r in replicas:
                await eventually(lambda r=r: _cluster_is(r, True))
            await eventually(lambda: _is_open(replicas[1]))
            assert "circuitbox_cluster_connected 1.0" in await replicas[1].metrics()


async def _answered(answers: list[bool], count: int) -> bool:
    return len(answers) >= count


async def _cluster_is(r: Replica, connected: bool) -> bool:
    return bool((await r.status())["cluster"]["connected"] is connected)


async def test_a_replica_started_while_redis_is_unreachable_starts_serves_and_joins_when_it_comes(
    tmp_path: Path,
) -> None:
    absent = RedisProcess(tmp_path / "redis")  # its port is free: nothing listens there yet
    async with chaos_http("work=healthy") as down:
        config = replica_config(absent.url, down.url)
        async with replica(tmp_path, "early", config) as early:
            assert not (await early.call()).is_error
            status = (await early.status())["cluster"]
            assert status["connected"] is False
            assert status["redis_url"] == absent.url
            await absent.start()
            try:
                await eventually(lambda: _cluster_is(early, True), limit=30)
            finally:
                absent.stop()


async def test_admin_actions_apply_to_the_whole_fleet_and_say_so(tmp_path: Path, redis_server: RedisProcess) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(redis_server.url, down.url, failure_threshold=5, timeout=60)
        async with fleet(tmp_path, 2, config) as (first, second):
            for r in (first, second):
                assert not (await r.call()).is_error
            forced = await first.admin("circuit_force", {"server": "down", "tool": "work", "state": "open"})
            assert "fleet-wide" in str(forced.content[0])
            await eventually(lambda: _state_is(second, "forced_open"))
            auto = await second.admin("circuit_force", {"server": "down", "tool": "work", "state": "auto"})
            assert "fleet-wide" in str(auto.content[0])
            await eventually(lambda: _state_is(first, "closed"))
            await first.admin("circuit_force", {"server": "down", "tool": "work", "state": "disabled"})
            await eventually(lambda: _state_is(second, "disabled"))
            reset = await second.admin("circuit_reset", {"server": "down", "tool": "work"})
            assert "fleet-wide" in str(reset.content[0])
            await eventually(lambda: _state_is(first, "closed"))
            configured = await first.admin(
                "circuit_configure", {"server": "down", "tool": "work", "settings": {"failure_threshold": 1}}
            )
            assert "fleet-wide" in str(configured.content[0])
            await down.set("work", "error")

            async def trips_on_one_failure() -> bool:  # once the change reached the second replica
                await second.admin("circuit_reset", {"server": "down", "tool": "work"})
                await second.call()
                return await state_of(second) == "open"

            await eventually(trips_on_one_failure)


async def _state_is(r: Replica, state: str) -> bool:
    return await state_of(r) == state
