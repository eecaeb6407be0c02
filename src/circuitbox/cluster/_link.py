"""The store's Redis task: connect, follow the group's events, publish this replica's transitions, reconnect.

Imported only when a cluster is configured (redis-py is the `circuitbox[redis]` extra). Every Redis call has a
socket timeout: a slow Redis is treated as a down one, and the breakers never wait for either.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio

from circuitbox.breakers import CircuitState
from circuitbox.cluster import _scripts
from circuitbox.cluster.store import Record

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from circuitbox.cluster.store import ClusterStore

logger = logging.getLogger("circuitbox.cluster")

REDIS_TIMEOUT = 3.0
"""Seconds any Redis call may take before the link counts as down (not less: a replica busy with hundreds of calls
on two shared cores can take a second to read a reply that came at once)."""
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_link(store: ClusterStore) -> None:
    """Until cancelled: one session at a time, and backoff between failed ones."""
    import redis.asyncio as aioredis  # the `circuitbox[redis]` extra: imported only when a cluster is configured
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    delay = BACKOFF_FIRST
    while True:
        client = aioredis.Redis.from_url(
            store.redis_url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # the session reconnects itself; no hidden retries that stall it
        )
        link = Link(store, client)
        try:
            await link.session()
        except Exception as exc:
            store.set_connected(False, _describe(exc))
        finally:
            with anyio.move_on_after(REDIS_TIMEOUT, shield=True):
                await link.close()
        if link.was_connected:
            delay = BACKOFF_FIRST
        await anyio.sleep(delay)  # the backoff itself, not a wait for something
        delay = min(delay * 2, BACKOFF_MAX)


class Link:
    """One connection's worth of work; any Redis error ends it (the caller reconnects)."""

    def __init__(self, store: ClusterStore, client: aioredis.Redis) -> None:
        self.store = store
        self.client = client
        self.keys = _scripts.keys(store.group)
        self.publish_script = client.register_script(_scripts.PUBLISH)
        self.tick_script = client.register_script(_scripts.TICK)
        self.acquire_script = client.register_script(_scripts.ACQUIRE_LEASES)
        self.touch_script = client.register_script(_scripts.TOUCH_LEASE)
        self.pubsub: Any = client.pubsub()  # its own connection, opened by subscribe()
        self.was_connected = False

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()

    async def session(self) -> None:
        await self.pubsub.subscribe(self.keys["events"])  # before the first resync: nothing falls in between
        await self.tick()
        self.was_connected = True
        self.store.set_connected(True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.listen)
            tg.start_soon(self.ticker)
            await self.work()

    # -- following the fleet ---------------------------------------------------------------------------------

    async def listen(self) -> None:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=self.store.interval)
            if message is not None and message.get("type") == "message":
                self.heard(message["data"])

    def heard(self, data: str) -> None:
        try:
            event = json.loads(data)
            if "configure" in event:
                self.store.configured(dict(event["configure"]), str(event["by"]))
                return
            name, now, record = str(event["name"]), int(event["now"]), Record.parse(event["record"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("cluster: ignoring a malformed event on %s: %s", self.keys["events"], exc)
            return
        store = self.store
        mine = store.records.get(name)
        if mine is not None and record.gen <= mine.gen:
            return  # our own publication coming back, or older than what we know
        if name in store.dirty:
            return  # a local change of ours is on its way: its publication settles which one stands
        store.adopt(name, record, now)

    async def ticker(self) -> None:
        # On a fixed schedule (not interval + the tick's own time): a missed event is repaired within one interval.
        deadline = anyio.current_time()
        while True:
            deadline = max(deadline + self.store.interval, anyio.current_time())
            await anyio.sleep_until(deadline)  # the resync period itself
            await self.tick()

    async def tick(self) -> None:
        """Heartbeat, replica count and a full resync, in one round trip."""
        store = self.store
        stale = int(store.interval * 3000)
        sent = store._clock()
        reply = await self.tick_script(keys=[self.keys["replicas"], self.keys["state"]], args=[store.replica, stale])
        now = int(reply[0])
        store.saw_redis_time(now, sent)
        store.replicas = max(1, int(reply[1]))
        seen: set[str] = set()
        for name, text in zip(reply[2::2], reply[3::2], strict=True):
            seen.add(name)
            record = Record.parse(text)
            mine = store.records.get(name)
            if name in store.dirty or (mine is not None and record.gen <= mine.gen):
                continue  # a local change is on its way: publishing it settles who is right
            store.adopt(name, record, now)
        for name in [n for n in store.records if n not in seen]:
            # Redis lost it (restarted without persistence, or flushed): what this replica holds is published again,
            # dated as the record it had (a later change here or elsewhere still wins over it).
            lost = store.records.pop(name)
            breaker = store.breakers.get(name)
            if breaker is not None and breaker.state is not CircuitState.CLOSED and name not in store.dirty:
                store.mark_dirty(name, "republished after Redis lost the record", at=lost.at or None)
        self.release_stale_tokens()
        store.wake()

    def release_stale_tokens(self) -> None:
        store = self.store
        now = store._clock()
        for name, tokens in list(store.tokens.items()):
            breaker = store.breakers.get(name)
            usable = store._usable_for(breaker) if breaker is not None else 0.0
            kept = [(slot, at) for slot, at in tokens if now - at <= usable]
            for slot, at in tokens:
                if now - at > usable:
                    store.ops.append(("release", name, slot))
            store.tokens[name] = kept

    # -- this replica's changes ------------------------------------------------------------------------------

    async def work(self) -> None:
        store = self.store
        while True:
            store._wake = wake = anyio.Event()  # a fresh one first: a change during the flush wakes the next round
            await self.flush()
            await wake.wait()

    async def flush(self) -> None:
        store = self.store
        while store.dirty:
            # The entry stays while it is published: an event heard meanwhile (another replica's publication
            # racing this one) is then left to the publication to settle, not adopted under it. If it fails, the
            # next session publishes it; a newer change made meanwhile replaces the entry and is published next.
            name = next(iter(store.dirty))
            entry = store.dirty[name]
            await self.publish(name, *entry)
            if store.dirty.get(name) is entry:
                del store.dirty[name]
        while store.wanted:
            name = next(iter(store.wanted))
            del store.wanted[name]
            await self.acquire(name)
        while store.configures:
            change = store.configures.popleft()
            message = json.dumps({"configure": change, "by": store.replica})
            await self.client.publish(self.keys["events"], message)
        while store.ops:
            op, name, slot = store.ops.popleft()
            ttl = 0
            breaker = store.breakers.get(name)
            if op == "extend" and breaker is not None:
                ttl = int(breaker.config.effective_half_open_timeout * 1000)
            elif op == "extend":
                continue
            await self.touch_script(keys=[f"{self.keys['lease']}{name}:{slot}"], args=[store.replica, ttl])

    async def publish(self, name: str, reason: str, at: int) -> None:
        store = self.store
        for _ in range(3):
            breaker = store.breakers.get(name)
            if breaker is None:
                return
            state = breaker.state
            mine = store.records.get(name)
            open_for = breaker.open_remaining() or 0.0
            sent = store._clock()
            reply = await self.publish_script(
                keys=[self.keys["state"], self.keys["open"], self.keys["events"]],
                args=[
                    name,
                    mine.gen if mine is not None else 0,
                    state.value,
                    int(open_for * 1000),
                    breaker.open_period,
                    reason,
                    store.replica,
                    at,
                ],
            )
            code, text, now = int(reply[0]), reply[1], int(reply[2])
            store.saw_redis_time(now, sent)
            theirs = Record.parse(text) if text else None
            if code != 0:
                assert theirs is not None
                store.records[name] = theirs
                return
            if not store.should_override(name, state, theirs, reason, at):
                assert theirs is not None  # a missing record is always overridden
                store.adopt(name, theirs, now)
                return
            if theirs is None:
                store.records.pop(name, None)
            else:
                store.records[name] = theirs
        logger.warning("cluster: could not publish %s of breaker %r after 3 races; the resync will", reason, name)

    async def acquire(self, name: str) -> None:
        store = self.store
        breaker = store.breakers.get(name)
        if breaker is None or breaker.state is not CircuitState.HALF_OPEN:
            return
        slots = breaker.config.half_open_max_calls
        held = len(store.tokens.get(name, [])) + sum(1 for s in store.in_use.get(name, []) if s >= 0)
        if held >= slots:
            return
        asked_at = store._clock()  # before the round trip: the slot's age is never underestimated
        ttl = int(breaker.config.effective_half_open_timeout * 1000)
        granted = await self.acquire_script(
            args=[f"{self.keys['lease']}{name}:", slots, slots - held, ttl, store.replica]
        )
        if breaker.state is not CircuitState.HALF_OPEN or store.breakers.get(name) is not breaker:
            for slot in granted:
                store.ops.append(("release", name, int(slot)))
            return
        store.tokens.setdefault(name, []).extend((int(slot), asked_at) for slot in granted)
