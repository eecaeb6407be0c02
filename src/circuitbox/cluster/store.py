"""`ClusterStore`: the breakers' state store for a fleet of replicas sharing one Redis.

What it shares: each breaker's state, fleet generation, open period (its end in Redis' clock, and its backoff
step) and the half-open probe budget. What it never does: a Redis round trip on a call. The hooks the breakers
call (see `circuitbox.breakers.StateStore`) only update this object and wake its task; `run()` does the Redis work
(`_link.py`) and imposes what other replicas decided.

Half-open probes across the fleet: `half_open_max_calls` slots per breaker, each a Redis key one replica holds for
`half_open_timeout` (PX), so a replica that dies mid-probe frees its slot. A replica asks for slots when a call
wants to probe and has none; the call that found none is rejected at once (retry in a second or less), the ones
after it probe. While Redis is unreachable each replica admits `half_open_max_calls` divided by the last known
replica count (at least 1) on its own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from circuitbox.breakers import CircuitState
from circuitbox.breakers._core import BreakerCore

logger = logging.getLogger("circuitbox.cluster")

MAX_OPS = 10_000
"""Lease operations waiting for Redis at most; past it the oldest are dropped (leases expire by themselves)."""
_OPERATOR_REASONS = ("reset by operator", "forced by operator")


@dataclass(frozen=True, slots=True)
class Record:
    """One breaker's state as the fleet knows it. `until` is the end of the open period in Redis' ms clock."""

    state: CircuitState
    gen: int
    until: int
    period: float
    reason: str
    by: str
    at: int = 0  # when the change was made, in Redis' ms clock (0: a record written before this field existed)

    @classmethod
    def parse(cls, text: str | bytes) -> Record:
        data = json.loads(text)
        return cls(
            CircuitState(data["state"]),
            int(data["gen"]),
            int(data["until"]),
            float(data["period"]),
            str(data.get("reason", "")),
            str(data.get("by", "")),
            int(data.get("at", 0)),
        )


# Under a second, so that a replica that missed an event still fails fast within 1 s of the trip (the contract),
# the resync's own round trip included: a period of exactly 1 s bounded a missed event by 1 s plus that trip.
RESYNC_INTERVAL = 0.9


def replica_id() -> str:
    """Host, PID and a random tag: unique across restarts of the same process id."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ClusterStore:
    """Shares the state of every breaker it is attached to with the other replicas of `group` through Redis.

    `clock` measures the age of probe slots (monotonic seconds); `interval` is the resync and heartbeat period.
    """

    def __init__(
        self,
        redis_url: str,
        group: str = "default",
        *,
        replica: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = RESYNC_INTERVAL,
        shown_url: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.shown_url = shown_url if shown_url is not None else redis_url
        self.group = group
        self.replica = replica if replica is not None else replica_id()
        self.interval = interval
        self._clock = clock
        self.breakers: dict[str, BreakerCore] = {}
        self.records: dict[str, Record] = {}  # the last fleet record seen of each breaker
        # Breakers whose local transition is not in Redis yet -> its reason and when it happened (Redis' ms clock).
        self.dirty: dict[str, tuple[str, int]] = {}
        self.wanted: dict[str, None] = {}  # breakers a call wanted a probe slot for
        self.ops: deque[tuple[str, str, int]] = deque(maxlen=MAX_OPS)  # ("extend" | "release", name, slot)
        self.tokens: dict[str, list[tuple[int, float]]] = {}  # granted unused slots -> when granted
        self.in_use: dict[str, list[int]] = {}  # slots of the probes in flight (-1: admitted alone)
        self.connected = False
        self.replicas = 1  # the last known count of live replicas
        self.last_error: str | None = None
        self.changed_at: float | None = None
        self.configures: deque[dict[str, Any]] = deque(maxlen=MAX_OPS)  # operator changes to send to the fleet
        self.on_configure: Callable[[str, str, dict[str, Any]], None] | None = None
        self._wake: anyio.Event | None = None
        # Until Redis is first seen, its clock is estimated by this host's wall clock (then corrected by each
        # round trip): a change made before the first contact still gets a comparable time.
        self._offset = int(time.time() * 1000) - int(clock() * 1000)

    # -- the breaker hooks (synchronous, no I/O) -------------------------------------------------------------

    def attach(self, breaker: BreakerCore) -> None:
        self.breakers[breaker.name] = breaker
        record = self.records.get(breaker.name)
        if record is not None and record.state is not CircuitState.CLOSED:
            self.adopt(breaker.name, record, self.now_ms())

    def detach(self, breaker: BreakerCore) -> None:
        if self.breakers.get(breaker.name) is breaker:
            del self.breakers[breaker.name]
            self._drop_probes(breaker.name)

    def on_transition(self, breaker: BreakerCore, source: CircuitState, target: CircuitState, reason: str) -> None:
        if source is CircuitState.HALF_OPEN:
            self._drop_probes(breaker.name)
        self.mark_dirty(breaker.name, reason)
        self.wake()

    def admit_probe(self, breaker: BreakerCore) -> bool:
        name = breaker.name
        in_use = self.in_use.setdefault(name, [])
        if not self.connected:
            if len(in_use) >= self.local_budget(breaker):
                return False
            in_use.append(-1)
            return True
        tokens = self.tokens.get(name)
        now = self._clock()
        usable = self._usable_for(breaker)
        while tokens:
            slot, granted = tokens.pop(0)
            if now - granted <= usable:
                in_use.append(slot)
                self.ops.append(("extend", name, slot))  # the probe's own half_open_timeout from now
                self.wake()
                return True
            self.ops.append(("release", name, slot))  # too old to start a probe on: give it back
        self.wanted[name] = None
        self.wake()
        return False

    def probe_done(self, breaker: BreakerCore) -> None:
        in_use = self.in_use.get(breaker.name)
        if in_use:
            slot = in_use.pop(0)
            if slot >= 0:
                self.ops.append(("release", breaker.name, slot))
                self.wake()

    # -- operator actions ------------------------------------------------------------------------------------

    def announce(self, breaker: BreakerCore, reason: str) -> None:
        """Publish the breaker's state as an operator set it, even if it did not change here (a reset of a breaker
        already closed on this replica still closes it everywhere)."""
        self.mark_dirty(breaker.name, reason)
        self.wake()

    def announce_configure(self, server: str, pattern: str, settings: dict[str, Any]) -> None:
        """Send a `circuit_configure` to the other replicas (applied there by `on_configure`)."""
        self.configures.append({"server": server, "pattern": pattern, "settings": settings})
        self.wake()

    def configured(self, change: dict[str, Any], by: str) -> None:
        """Another replica's operator changed thresholds: apply it here too."""
        if by == self.replica or self.on_configure is None:
            return
        try:
            self.on_configure(str(change["server"]), str(change["pattern"]), dict(change["settings"]))
        except Exception as exc:  # a replica with another config may not have that server: its own business
            logger.warning("cluster: could not apply replica %s's circuit_configure %s here: %s", by, change, exc)
        else:
            logger.warning("cluster: applied replica %s's circuit_configure %s", by, change)

    # -- shared by the hooks and the Redis task --------------------------------------------------------------

    def local_budget(self, breaker: BreakerCore) -> int:
        """Probes this replica admits alone: its share of the fleet's budget, at least 1."""
        return max(1, breaker.config.half_open_max_calls // max(1, self.replicas))

    @staticmethod
    def _usable_for(breaker: BreakerCore) -> float:
        # A slot is held for half_open_timeout from its grant; a probe may start on it only in the first half,
        # so the extension the probe sends reaches Redis well before the slot could expire under it.
        return min(1.0, breaker.config.effective_half_open_timeout / 2)

    def _drop_probes(self, name: str) -> None:
        for slot, _ in self.tokens.pop(name, []):
            self.ops.append(("release", name, slot))
        for slot in self.in_use.pop(name, []):
            if slot >= 0:
                self.ops.append(("release", name, slot))
        self.wanted.pop(name, None)

    def saw_redis_time(self, now_ms: int, sent: float) -> None:
        """Redis' clock read just now (by a script sent at `sent`, this replica's clock): keeps the offset that turns
        this replica's clock into Redis' one. Redis read its clock about halfway through the round trip, so the
        midpoint is taken: replicas' estimates then agree to within half their round trips, not a whole one."""
        self._offset = now_ms - int((sent + self._clock()) / 2 * 1000)

    def now_ms(self) -> int:
        """Redis' clock as this replica estimates it (skewed host clocks do not matter: only Redis' counts)."""
        return int(self._clock() * 1000) + self._offset

    def mark_dirty(self, name: str, reason: str, at: int | None = None) -> None:
        """Queue `name`'s current state for publication, stamped with when it changed (now unless `at`)."""
        self.dirty[name] = (reason, self.now_ms() if at is None else at)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def adopt(self, name: str, record: Record, now: int) -> None:
        """Take `record` as the fleet's word on `name` (`now`: Redis' clock when it was read)."""
        self.records[name] = record
        breaker = self.breakers.get(name)
        if breaker is None:
            return
        self.dirty.pop(name, None)
        was = breaker.state
        open_for = max(0.0, (record.until - now) / 1000) if record.state is CircuitState.OPEN else 0.0
        by = "this replica" if record.by == self.replica else f"replica {record.by}"
        breaker.impose(record.state, reason=f"{record.reason} ({by})", open_for=open_for, period=record.period)
        if was is CircuitState.HALF_OPEN and breaker.state is not CircuitState.HALF_OPEN:
            self._drop_probes(name)

    def should_override(self, name: str, mine: CircuitState, theirs: Record | None, reason: str, at: int) -> bool:
        """After a lost race: publish again over `theirs`? An operator's action (made at `at`) wins over anything
        that happened before it, not over what a replica saw after it (a reset made on a replica cut off from
        Redis does not undo another replica's later trip when Redis comes back); a trip wins over a close (it is
        new evidence of an outage); Redis having lost the record (a restart) is no contest."""
        if theirs is None:
            return True
        if reason in _OPERATOR_REASONS:
            return theirs.at <= at
        return mine is CircuitState.OPEN and theirs.state is CircuitState.CLOSED

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if connected == self.connected:
            return
        self.connected = connected
        self.changed_at = time.time()
        if connected:
            logger.warning("cluster: connected to Redis %s (group %r)", self.shown_url, self.group)
        else:
            logger.warning(
                "cluster: Redis %s unreachable (%s); going on alone with 1/%d of each probe budget",
                self.shown_url,
                self.last_error,
                self.replicas,
            )
            self.tokens.clear()  # a slot granted by Redis is not this replica's to use alone

    # -- what circuit_status shows ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "group": self.group,
            "redis_url": self.shown_url,
            "replica": self.replica,
            "replicas": self.replicas,
            "open_in_fleet": sorted(n for n, r in self.records.items() if r.state is not CircuitState.CLOSED),
            "last_error": self.last_error,
            "since": self.changed_at,
        }

    async def run(self) -> None:
        """Keep the link to Redis until cancelled: connect, resync, follow, reconnect with backoff."""
        from circuitbox.cluster._link import run_link

        self._wake = anyio.Event()
        await run_link(self)
