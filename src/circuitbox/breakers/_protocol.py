"""The per-call decisions: `acquire()` (admit or reject), settling a permit's outcome, the trip rules, snapshots.

Every check-and-update here is synchronous, so on one event loop no lock is needed and concurrent calls never
wait on each other.
"""

from __future__ import annotations

from circuitbox.breakers._core import _CLOSED, _DISABLED, _FORCED_OPEN, _HALF_OPEN, _OPEN, BreakerCore
from circuitbox.breakers._events import CallFailed, CallIgnored, CallRejected, CallSucceeded, deliver
from circuitbox.breakers._permit import FAILURE, IGNORED, SUCCESS, Permit, Rejection
from circuitbox.breakers._snapshot import BreakerSnapshot, health_score
from circuitbox.breakers._window import CALL, FAILED, SLOW, Window


def _describe(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class BreakerProtocol(BreakerCore):
    """The permit protocol on top of the breaker's state."""

    __slots__ = ()

    def snapshot(self) -> BreakerSnapshot:
        """State, window counts, rates and health now. A pure read: it never makes a transition (an elapsed open
        period or an overdue probe is acted on by the next `acquire()`), so a metrics scrape changes nothing."""
        now = self._clock()
        window = self._window
        window.advance(now)
        calls, failures, slow = window.calls, window.failures, window.slow
        failure_rate = failures / calls if calls else 0.0
        slow_rate = slow / calls if calls else 0.0
        state = self._state
        retry_after = max(0.0, self._open_until - now) if state is _OPEN else None
        return BreakerSnapshot(
            self.name,
            state,
            calls,
            calls - failures,
            failures,
            slow,
            failure_rate,
            slow_rate,
            self._consecutive,
            self._last_error,
            self._opened_at,
            retry_after,
            self._generation,
            health_score(state, failure_rate, slow_rate),
        )

    # -- the permit protocol ---------------------------------------------------------------------------------

    def acquire(self) -> Permit | Rejection:
        """A `Permit` for one call, or a `Rejection` (test `.rejected`). Never blocks, never raises."""
        if self._passing:
            return Permit(self, self._generation, self._clock() if self._timed else None)
        now = self._clock()
        state = self._state
        if state is _OPEN:
            if now < self._open_until:
                rejection = self._rejection
                if rejection is not None and not self._listeners:
                    return rejection  # the common case, without a call
                return self._reject(now)
            self._transition(_HALF_OPEN, now, "open period elapsed")
        elif state is _FORCED_OPEN:
            return self._reject(now)
        probes = self._probes
        if (probes and self._expire_probes(now)) or len(probes) >= self._half_open_max:
            return self._reject(now)
        store = self._store
        if store is not None and not store.admit_probe(self):
            return self._reject(now)
        permit = Permit(self, self._generation, now)
        probes[permit] = now
        self._rejection = None  # the earliest free slot may have moved
        return permit

    def rejection(self) -> Rejection | None:
        """The `Rejection` that `acquire()` would return now without a transition (open with its period running,
        or forced open), with the same side effect (a `CallRejected` event); None when `acquire()` would admit the
        call or decide otherwise (closed, half-open, an elapsed open period): then call `acquire()`. A pure check
        otherwise, so a caller can answer a fast-fail before it commits to any of the call's work."""
        state = self._state
        if state is _OPEN:
            now = self._clock()
            if now >= self._open_until:
                return None
        elif state is _FORCED_OPEN:
            now = self._clock()
        else:
            return None
        rejection = self._rejection
        if rejection is not None and not self._listeners:
            return rejection
        return self._reject(now)

    def _reject(self, now: float) -> Rejection:
        rejection = self._rejection
        if rejection is None:
            state = self._state
            if state is _OPEN:
                retry_at: float | None = self._open_until
            elif state is _HALF_OPEN and self._probes:  # full: a slot is free when the oldest probe expires
                retry_at = next(iter(self._probes.values())) + self._hot
            elif state is _HALF_OPEN:  # the store has no probe for this replica now: ask again soon
                retry_at = now + min(1.0, self._hot)
            else:
                retry_at = None
            rejection = self._rejection = Rejection(self.name, state, self._last_error, retry_at, self._clock)
        if self._listeners:
            deliver(self._listeners, CallRejected(self.name, now, rejection.state, rejection.retry_after))
        return rejection

    def _expire_probes(self, now: float) -> bool:
        """Reopen if the oldest probe is past half_open_timeout; True if it did."""
        if now - next(iter(self._probes.values())) < self._hot:
            return False
        self._last_error = f"probe did not answer within half_open_timeout ({self._hot:g}s)"
        self._open(now, "probe timed out", backoff=True)
        return True

    def _settle(
        self,
        generation: int,
        start: float | None,
        probe: Permit | None,
        outcome: int,
        kind: str,
        error: BaseException | str | None,
    ) -> None:
        """Apply the outcome of a call admitted in `generation` at `start` (the general path).

        `probe` is the permit (None when `call()` admitted it without one, which never happens in half-open).
        """
        now = self._clock()
        duration = now - start if start is not None else 0.0
        limit = self._slow
        slow = limit is not None and outcome <= FAILURE and start is not None and duration >= limit
        message = _describe(error) if outcome == FAILURE else None
        listeners = self._listeners
        if listeners:
            if outcome == SUCCESS:
                deliver(listeners, CallSucceeded(self.name, now, duration, slow))
            elif outcome == FAILURE:
                deliver(listeners, CallFailed(self.name, now, duration, kind, message, slow))
            elif outcome == IGNORED:
                deliver(listeners, CallIgnored(self.name, now, duration))
        state = self._state
        if generation != self._generation or state is _DISABLED:
            return  # stale (its state has ended) or disabled: nothing is recorded
        if state is _HALF_OPEN:
            assert probe is not None  # half-open admits through acquire() only
            del self._probes[probe]
            self._rejection = None
            if self._store is not None:
                self._store.probe_done(self)
            if outcome == SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self._success_threshold:
                    self._close(now, f"{self._probe_successes} probes succeeded")
            elif outcome == FAILURE:
                self._last_error = message
                self._open(now, f"probe failed ({kind})", backoff=True)
            return
        # closed or metrics_only (open and forced_open never issue permits)
        if outcome == SUCCESS:
            self._consecutive = 0
            if not slow:
                self._window.record(CALL, now)
                return  # a plain success never trips anything
            self._window.record(CALL | SLOW, now)
        elif outcome == FAILURE:
            self._consecutive += 1
            self._last_error = message
            self._window.record(CALL | FAILED | SLOW if slow else CALL | FAILED, now)
        else:
            return
        if state is _CLOSED:
            self._check_trip(now, outcome == FAILURE, slow, self._window)

    def _check_trip(self, now: float, failed: bool, slow: bool, window: Window) -> None:
        if failed and self._consecutive >= self._failure_threshold:
            self._open(now, f"{self._consecutive} consecutive failures")
            return
        calls = window.calls
        if calls < self._min_calls:
            return
        if failed and window.failures / calls >= self._rate:
            self._open(now, f"failure rate {window.failures / calls:.0%} over {calls} calls")
        elif slow and window.slow / calls >= self._slow_rate:
            self._open(now, f"slow call rate {window.slow / calls:.0%} over {calls} calls")
