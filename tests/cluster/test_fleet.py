"""Replicas of `circuitbox serve --transport http` as real processes in front of one faulty downstream (the
bundled chaos server), sharing their breakers through a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from circuitbox.cluster._scripts import keys
from tests.cluster.fleet import GROUP, Replica, breaker_meta, chaos_http, eventually, fleet, replica_config
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
    async with chaos_http("work=healthy") as down:
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
            assert status["cluster"]["replicas"] == 3
            assert status["cluster"]["group"] == GROUP
            assert "circuitbox_cluster_connected 1.0" in await replicas[1].metrics()
            record = await fleet_record(redis_server.url)
            assert record is not None and record["state"] == "open" and record["gen"] == 1


async def _is_open(r: Replica) -> bool:
    return await state_of(r) == "open"


async def test_three_hundred_calls_into_half_open_across_three_replicas_reach_the_downstream_at_most_max_probes_times(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    async with chaos_http("work=healthy") as down:
        config = replica_config(
            redis_server.url, down.url, failure_threshold=1, timeout=1, half_open_max_calls=2, call_timeout=20
        )
        async with fleet(tmp_path, 3, config) as replicas:
            for r in replicas:
                assert not (await r.call()).is_error
            await down.set("work", "error")
            assert (await replicas[0].call()).is_error
            for r in replicas:
                await eventually(lambda r=r: _is_open(r))
            await down.set("work", "latency:20")  # healthy again, slowly: the probes stay in flight
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
            async with anyio.create_task_group() as tg:  # the probes answer after 20 s: they are cancelled here
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
