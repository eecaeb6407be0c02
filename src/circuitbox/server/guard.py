"""The guarded call: permit, forward under the deadline, classify, record.

One breaker per (server, tool), created on first use from the effective policy. Every failure on the downstream
side becomes an `isError` result the agent can read; only the agent's own mistakes (bad arguments, as the
downstream reports them) travel back as JSON-RPC errors.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio
import mcp_types as types
from mcp import MCPError

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, CircuitState, Permit, Rejection
from circuitbox.config.load import ConfigError, ProxyConfig
from circuitbox.config.policy import LastKnownGood, RetryPolicy, TextFallback, ToolFallback, ToolPolicy, retune
from circuitbox.observability import traces
from circuitbox.server import request_meta, tasks
from circuitbox.server.classify import CALLER_MISTAKES, SUCCESS, Outcome, Verdict, classify_error, classify_result
from circuitbox.server.direct_calls import WireResult, plain_result
from circuitbox.server.downstream import Downstream, DownstreamUnavailableError, ProgressCallback
from circuitbox.server.limits import BUSY, RATE_LIMITED, Clock, Slots, TokenBucket, ToolLimits
from circuitbox.server.retry import RETRYABLE, RetryBudget, backoff, is_read_only, may_retry
from circuitbox.server.stale import KeptAnswers, arguments_key, stale_result

logger = logging.getLogger("circuitbox.guard")

META_KEY = "circuitbox/breaker"
SERVER_META_KEY = "circuitbox/server"
LIMIT_META_KEY = "circuitbox/limit"


REFUSING = frozenset((CircuitState.OPEN, CircuitState.FORCED_OPEN))
"""The states in which a circuit may refuse a call without a transition (`CircuitBreaker.rejection`)."""


def breaker_name(server: str, tool: str) -> str:
    return f"{server}__{tool}"


# A published tool name -> (its downstream owner, the tool as that downstream names it), or None.
Resolver = Callable[[str], "tuple[Downstream, str] | None"]

# What a stale answer's first line says happened to the call.
STALE_WHY = {
    "failed": "failed just now",
    "rejected": "was not called: its circuit breaker is open",
    "unavailable": "was not called: its server is not connected",
}


@dataclass(frozen=True, slots=True)
class Failed:
    """An attempt that counted as a failure: the answer to give the agent, and the failure's kind."""

    result: types.CallToolResult
    kind: str


# One attempt's outcome: the downstream's result, a counted failure, or the breaker's rejection.
Answer = types.CallToolResult | types.InputRequiredResult | WireResult | Failed | Rejection


class Guard:
    """Owns the (server, tool) breakers of one proxy and runs calls through them."""

    def __init__(
        self,
        config: ProxyConfig,
        registry: BreakerRegistry,
        *,
        on_new_breaker: Callable[[CircuitBreaker, str, str], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
        clock: Clock | None = None,
        on_count: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_count(breaker_name, what)` hears of each retry ("retries") and stale answer ("stale_answers");
        `clock` (monotonic seconds) dates kept answers and the retry budget."""
        self.config = config
        self.registry = registry
        self._on_count = on_count
        # Per (server, tool), only for tools that use them: the retry budget, the last good answers.
        self._budgets: dict[tuple[str, str], RetryBudget] = {}
        self._kept: dict[tuple[str, str], KeptAnswers] = {}
        self._breakers: dict[tuple[str, str], tuple[CircuitBreaker, ToolPolicy]] = {}
        self._on_new_breaker = on_new_breaker
        self._on_forget = on_forget
        self._labels: dict[str, tuple[str, str]] = {}
        # Run-time changes (circuit_configure), in order: (server, tool glob, settings). Kept so that breakers
        # created later, and breakers rebuilt by a reload, get them too.
        self._overrides: list[tuple[str, str, dict[str, Any]]] = []
        # (server, tool) whose last outcome was a transport failure: when the server is back, their open breakers
        # are probed at once rather than after their open period (the cause, a dead connection, is gone).
        self._transport_failed: set[tuple[str, str]] = set()
        # Bulkheads and rate limits per (server, tool), kept for the breaker's life and retuned in place, so that
        # calls in flight release into the same slots they took; `server_max_concurrent` slots per server.
        self._limits: dict[tuple[str, str], ToolLimits] = {}
        self._server_slots: dict[str, Slots] = {}
        self._clock: Clock = clock if clock is not None else time.monotonic  # a plain read: ~0.1 us, anyio's ~1 us

    def breaker(self, server: str, tool: str) -> tuple[CircuitBreaker, ToolPolicy]:
        key = (server, tool)
        found = self._breakers.get(key)
        if found is None:
            policy = self._with_overrides(server, tool, self.config.policy(server, tool))
            breaker = self.registry.get_or_create(breaker_name(server, tool), policy.breaker)
            found = self._breakers[key] = (breaker, policy)
            self._limits[key] = self._retune_limits(ToolLimits(), server, policy)
            self._labels[breaker.name] = key
            if self._on_new_breaker is not None:
                self._on_new_breaker(breaker, server, tool)
        return found

    def plan_reload(self, config: ProxyConfig) -> list[tuple[str, str, ToolPolicy]]:
        """Every existing breaker's policy under `config` (with run-time overrides), computed before anything changes.

        Raises:
            ConfigError, ValueError: a policy that the new file makes invalid; nothing has been changed.
        """
        return [
            (server, tool, self._with_overrides(server, tool, config.policy(server, tool)))
            for (server, tool) in self._breakers
            if server in config.servers
        ]

    def apply_reload(self, config: ProxyConfig, plan: list[tuple[str, str, ToolPolicy]]) -> list[tuple[str, str]]:
        """Switch to `config`; reconfigure only the breakers whose policy changed (their window and state stay)."""
        self.config = config
        for server in list(self._server_slots):
            if server not in config.servers or config.servers[server].server_max_concurrent is None:
                del self._server_slots[server]
        for (server, tool), limits in self._limits.items():
            if server in config.servers:
                self._retune_limits(limits, server, self._breakers[(server, tool)][1])
        changed = []
        for server, tool, new in plan:
            breaker, policy = self._breakers[(server, tool)]
            if new != policy:
                if new.breaker != policy.breaker:
                    breaker.reconfigure(new.breaker)
                self._breakers[(server, tool)] = (breaker, new)
                self._retune_limits(self._limits[(server, tool)], server, new)
                changed.append((server, tool))
        return changed

    def _retune_limits(self, limits: ToolLimits, server: str, policy: ToolPolicy) -> ToolLimits:
        """`limits` set to `policy` and to the server's `server_max_concurrent`; slots are resized in place (their
        holders release into them), a bucket is replaced only when its rate changed."""
        cap = policy.max_concurrent
        if cap is None:
            limits.slots = None
        elif limits.slots is None:
            limits.slots = Slots(cap)
        else:
            limits.slots.resize(cap)
        rate = policy.rate_limit
        if rate is None:
            limits.bucket, limits.rate = None, None
        elif rate != limits.rate:
            limits.bucket, limits.rate = TokenBucket(rate, self._clock), rate
        srv = self.config.servers.get(server)
        server_cap = srv.server_max_concurrent if srv is not None else None
        if server_cap is None:
            limits.server_slots = None
        else:
            slots = self._server_slots.get(server)
            if slots is None:
                slots = self._server_slots[server] = Slots(server_cap)
            slots.resize(server_cap)
            limits.server_slots = slots
        limits.queue_timeout = policy.queue_timeout
        limits.gated = limits.slots is not None or limits.bucket is not None or limits.server_slots is not None
        return limits

    def limits_of(self, server: str, tool: str) -> ToolLimits:
        """The limits of a (server, tool) that has a breaker (they are made and forgotten together).

        Raises:
            KeyError: it has no breaker.
        """
        return self._limits[(server, tool)]

    def limit_stats(self) -> list[tuple[str, str, ToolLimits]]:
        """Every (server, tool) the guard knows with its in-flight count and limited counters (for the metrics)."""
        return [(server, tool, limits) for (server, tool), limits in self._limits.items()]

    def _add_override(self, server: str, pattern: str, settings: Mapping[str, Any]) -> None:
        """Keep only what a later change does not supersede: the list stays bounded by (pattern, field) pairs."""
        kept = []
        for srv, glob, old in self._overrides:
            if srv == server and (glob == pattern or pattern == "*"):
                old = {k: v for k, v in old.items() if k not in settings}
            if old:
                kept.append((srv, glob, old))
        kept.append((server, pattern, dict(settings)))
        self._overrides = kept

    def override_count(self) -> int:
        """Run-time changes kept (for tests and status)."""
        return len(self._overrides)

    def _with_overrides(self, server: str, tool: str, policy: ToolPolicy) -> ToolPolicy:
        for srv, pattern, settings in self._overrides:
            if srv == server and fnmatch.fnmatchcase(tool, pattern):
                policy = retune(policy, settings)
        return policy

    def configure(
        self, server: str, pattern: str, settings: Mapping[str, Any], tools: Iterable[str] = ()
    ) -> list[tuple[str, dict[str, tuple[Any, Any, str]]]]:
        """Change thresholds of the breakers of `server` whose tool matches `pattern`, now and for later ones.

        `tools` are the server's known tool names: the change is validated against each matching one's policy
        first, so it is applied everywhere or nowhere. Returns (tool, {field: (old, new)}) for every existing
        breaker changed; window state is kept.

        Raises:
            ConfigError: a setting is unknown, of the wrong type or out of range for some tool (validated like the
                config file, naming `settings.<field>`).
        """
        retune(self.config.policy(server), settings)
        for tool in tools:
            if fnmatch.fnmatchcase(tool, pattern) and (server, tool) not in self._breakers:
                retune(self._with_overrides(server, tool, self.config.policy(server, tool)), settings)
        planned = [
            (tool, breaker, policy, retune(policy, settings))
            for (srv, tool), (breaker, policy) in self._breakers.items()
            if srv == server and fnmatch.fnmatchcase(tool, pattern)
        ]
        self._add_override(server, pattern, settings)
        changed = []
        for tool, breaker, policy, new in planned:
            breaker.reconfigure(new.breaker)
            self._breakers[(server, tool)] = (breaker, new)
            self._retune_limits(self._limits[(server, tool)], server, new)
            changed.append((tool, {k: (policy.value(k), new.value(k), new.sources[k]) for k in settings}))
        return changed

    def policies_of(self, server: str) -> list[tuple[str, CircuitBreaker, ToolPolicy]]:
        return [(tool, breaker, policy) for (srv, tool), (breaker, policy) in self._breakers.items() if srv == server]

    def known(self) -> list[tuple[str, str, CircuitBreaker]]:
        """Every breaker created so far, as (server, tool, breaker)."""
        return [(server, tool, breaker) for (server, tool), (breaker, _) in self._breakers.items()]

    def listing_entry(self, server: str, tool: str) -> tuple[CircuitBreaker, str] | None:
        """The tool's breaker and its `tool_list` (how the tool list shows an open circuit), once it has a breaker."""
        found = self._breakers.get((server, tool))
        return None if found is None else (found[0], found[1].tool_list)

    def find(self, server: str, tool: str) -> CircuitBreaker | None:
        found = self._breakers.get((server, tool))
        return found[0] if found else None

    def labels_for(self, name: str) -> tuple[str, str]:
        """(server, tool) of a breaker name; a name the guard did not create is its own server."""
        return self._labels.get(name, (name, ""))

    def reconnected(self, server: str) -> list[str]:
        """`server` is connected again: its breakers that opened on transport errors go half-open now.

        Returns the tools whose breakers were probed early.
        """
        probed = []
        for key in [k for k in self._transport_failed if k[0] == server]:
            self._transport_failed.discard(key)
            found = self._breakers.get(key)
            if found is not None and found[0].probe_now(f"server {server!r} reconnected"):
                probed.append(key[1])
        return probed

    def forget(self, server: str, tool: str) -> None:
        self._transport_failed.discard((server, tool))
        self._budgets.pop((server, tool), None)
        self._kept.pop((server, tool), None)
        found = self._breakers.pop((server, tool), None)
        self._limits.pop((server, tool), None)
        if found is not None:
            name = found[0].name
            self.registry.remove(name)
            self._labels.pop(name, None)
            if self._on_forget is not None:
                self._on_forget(name)

    @overload
    async def call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None = None,
        *,
        published: str,
        resolve: Resolver | None = None,
        definition: types.Tool | None = None,
        wire: Literal[False] = False,
    ) -> types.CallToolResult | types.InputRequiredResult: ...

    @overload
    async def call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None = None,
        *,
        published: str,
        resolve: Resolver | None = None,
        definition: types.Tool | None = None,
        wire: bool,
    ) -> types.CallToolResult | types.InputRequiredResult | WireResult: ...

    async def call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None = None,
        *,
        published: str,
        resolve: Resolver | None = None,
        definition: types.Tool | None = None,
        wire: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult | WireResult:
        """One guarded call, answered: the downstream's result (a 2026-era server's may be input-required), a
        failure as an `isError` result, or, when the circuit rejects it, the fallback (text, or another tool
        `resolve` routes, guarded by its own breaker, one level deep) or the rejection's answer.

        `definition` is the tool as listed: its annotations say whether it may be retried (`retry`) or answered
        from its last good result (`fallback.last_known_good`); without it, neither happens.

        `wire`: the caller answers a handshake-era client and takes a `WireResult`, which a plain call (no retry,
        no fallback, not task-augmented, past the SDK's session) of a plain success gives (`plain_result`).

        A call to a server that is not connected (starting, restarting, down) is answered at once and counts against
        no breaker: the server's connection state already says what is wrong, and a breaker opened by a restart
        would keep failing calls after the server is back.

        Raises:
            MCPError: the agent's own mistake, as the downstream reported it (invalid params, unknown tool).
        """
        if downstream.session is None:
            refusal = unavailable_result(downstream, published)
            answer = await self._fall_back(
                downstream, tool, arguments, progress, refusal, resolve, published, definition
            )
            return answer or refusal
        outcome = await self._limited(downstream, tool, arguments, progress, published, definition, wire)
        kind = outcome.__class__  # no call on the hot path: an answer is by far the most common outcome
        if kind is WireResult or kind is types.CallToolResult:
            return outcome  # type: ignore[return-value]
        if isinstance(outcome, Failed):
            return outcome.result
        if not isinstance(outcome, Rejection):
            return outcome
        rejected = rejection_result(downstream.name, tool, published, outcome)
        answer = await self._fall_back(downstream, tool, arguments, progress, rejected, resolve, published, definition)
        return answer or rejected

    def reject_now(self, downstream: Downstream, tool: str, published: str) -> dict[str, Any] | None:
        """The answer `call` gives at once when the circuit refuses the call and nothing else could answer it (no
        retry, no fallback, no limit that queues, the server connected): the same rejection, recorded the same
        way, without a coroutine, as the wire has it (`rejection_wire`). None: `call` decides (the circuit admits
        the call, or a policy may act)."""
        key = (downstream.name, tool)
        try:
            breaker, policy = self.breaker(*key)
        except (ConfigError, ValueError):
            return None
        if breaker.state not in REFUSING:  # every forwarded call of the lane asks: a closed circuit stops here
            return None
        limits = self._limits.get(key)
        if downstream.session is None or limits is None or limits.gated:
            return None
        if policy.retry is not None or policy.fallback is not None:
            return None
        rejection = breaker.rejection()
        return None if rejection is None else rejection_wire(downstream.name, tool, published, rejection)

    def _run(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        published: str,
        definition: types.Tool | None,
        wire: bool = False,
    ) -> Awaitable[Answer]:
        """The call through its breaker: one attempt, or, when its policy sets `retry` or a fallback, retried and
        answered from a kept result as the policy and the tool's annotations allow. Not a coroutine itself: the
        plain path awaits `_attempt` directly, one frame less per call."""
        try:
            breaker, policy = self.breaker(downstream.name, tool)
        except (ConfigError, ValueError) as exc:  # a policy only this tool's name makes invalid: still an answer
            logger.error("no valid policy for %s/%s: %s", downstream.name, tool, exc)
            return _ready(
                error_result(f"Tool '{tool}' of server '{downstream.name}' has an invalid circuit policy: {exc}")
            )
        if policy.retry is None and policy.fallback is None:  # the plain path: one attempt, nothing kept
            return self._attempt(downstream, tool, arguments, progress, breaker, policy, wire=wire)
        return self._surface_call(downstream, tool, arguments, progress, breaker, policy, published, definition)

    async def _surface_call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        breaker: CircuitBreaker,
        policy: ToolPolicy,
        published: str,
        definition: types.Tool | None,
    ) -> Answer:
        """A call of a tool with `retry` or a fallback set: retried when it may be, its success kept when its
        last good result may be served."""
        retry = may_retry(policy, definition)
        if retry is None:
            outcome = await self._attempt(downstream, tool, arguments, progress, breaker, policy)
        else:
            outcome = await self._retried(downstream, tool, arguments, progress, breaker, policy, retry)
        if policy.last_known_good is None or not is_read_only(definition):
            return outcome
        if isinstance(outcome, Failed):
            return self._stale(downstream.name, tool, arguments, policy, definition, published, "failed") or outcome
        if isinstance(outcome, types.CallToolResult) and not outcome.is_error:
            kept = self._kept.get((downstream.name, tool))
            if kept is None:
                kept = self._kept[(downstream.name, tool)] = KeptAnswers()
            kept.keep(arguments_key(arguments), outcome, self._clock())
        return outcome

    async def _retried(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        breaker: CircuitBreaker,
        policy: ToolPolicy,
        retry: RetryPolicy,
    ) -> Answer:
        """Attempts until one does not time out or break the connection, `retry.attempts` at most, within
        `call_timeout` x `attempts` from the start, while the budget allows and the circuit lets them through."""
        key = (downstream.name, tool)
        budget = self._budgets.get(key)
        if budget is None or budget.ratio != retry.budget:
            budget = self._budgets[key] = RetryBudget(retry.budget, self._clock)
        budget.called()
        until = anyio.current_time() + policy.call_timeout * retry.attempts
        outcome = await self._attempt(downstream, tool, arguments, progress, breaker, policy, until)
        for number in range(1, retry.attempts):
            if not isinstance(outcome, Failed) or outcome.kind not in RETRYABLE or downstream.session is None:
                break
            wait = backoff(retry, number)
            if anyio.current_time() + wait >= until:
                break
            if not budget.allows():
                logger.debug("%s/%s: not retried, its retry budget is spent", downstream.name, tool)
                break
            budget.spent()  # at once: calls failing together must not all see the same budget left
            await anyio.sleep(wait)
            retried = await self._attempt(downstream, tool, arguments, progress, breaker, policy, until)
            if isinstance(retried, Rejection):  # the circuit opened: no retry past it
                return retried
            if self._on_count is not None:
                self._on_count(breaker.name, "retries")
            outcome = retried
        return outcome

    def _stale(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any] | None,
        policy: ToolPolicy,
        definition: types.Tool | None,
        published: str,
        why: str,
        meta: dict[str, Any] | None = None,
    ) -> types.CallToolResult | None:
        """The last good result for these arguments, marked stale, when the policy and the tool allow it."""
        lkg = policy.last_known_good
        kept = self._kept.get((server, tool)) if lkg is not None else None
        if kept is None or lkg is None or not is_read_only(definition):
            return None
        found = kept.find(arguments_key(arguments), lkg.max_age, self._clock())
        if found is None:
            return None
        if self._on_count is not None:
            self._on_count(breaker_name(server, tool), "stale_answers")
        return stale_result(found[0], found[1], published, STALE_WHY[why], meta)

    async def _fall_back(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        refusal: types.CallToolResult,
        resolve: Resolver | None,
        published: str,
        definition: types.Tool | None,
    ) -> types.CallToolResult | types.InputRequiredResult | None:
        """The fallback's answer to a call that was not made, or None without one."""
        try:
            breaker, policy = self.breaker(downstream.name, tool)
        except (ConfigError, ValueError):
            return None
        fallback = policy.fallback
        if isinstance(fallback, LastKnownGood):
            why = "rejected" if META_KEY in (refusal.meta or {}) else "unavailable"
            stale = self._stale(downstream.name, tool, arguments, policy, definition, published, why, refusal.meta)
            if stale is not None:
                breaker.record_fallback()
                return stale
            fallback = fallback.then
        if isinstance(fallback, TextFallback):
            breaker.record_fallback()
            return types.CallToolResult(
                content=[types.TextContent(text=fallback.text)],
                _meta={"circuitbox/fallback": True, **(refusal.meta or {})},
            )
        target = resolve(fallback.tool) if isinstance(fallback, ToolFallback) and resolve is not None else None
        if target is not None:
            breaker.record_fallback()
            other, other_tool = target
            assert isinstance(fallback, ToolFallback)
            # Without a resolver: the fallback's own fallback may be text, never another hop (no cycles). Its own
            # listing says whether it may be retried or answered from a kept result (a rare path: a scan is fine).
            listed = next((t for t in other.listing.tools if t.name == other_tool), None)
            return await self.call(other, other_tool, arguments, progress, published=fallback.tool, definition=listed)
        return None

    async def _limited(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        published: str,
        definition: types.Tool | None,
        wire: bool = False,
    ) -> Answer:
        """`_run` once the call has its rate-limit token and its concurrency slots (tool, then server), or the
        "rate limited" / "busy" answer when it cannot have them within `queue_timeout`. Neither answer is recorded
        in the breaker; a token whose call the circuit rejects is given back."""
        key = (downstream.name, tool)
        limits = self._limits.get(key)
        if limits is None:
            try:
                self.breaker(*key)
            except (ConfigError, ValueError):
                return await self._run(
                    downstream, tool, arguments, progress, published, definition
                )  # answers the bad policy
            limits = self._limits[key]
        if not limits.gated:
            limits.inflight += 1
            try:
                return await self._run(downstream, tool, arguments, progress, published, definition, wire)
            finally:
                limits.inflight -= 1
        queue_timeout = limits.queue_timeout
        started = self._clock() if queue_timeout > 0 else 0.0  # read only when a wait may come
        bucket = limits.bucket
        if bucket is not None and not bucket.try_take():
            ok, wait = bucket.take(queue_timeout)
            if not ok:
                return self._refuse(limits, RATE_LIMITED, wait, downstream.name, tool, published)
            try:
                await anyio.sleep(wait)
            except BaseException:
                bucket.refund()
                raise
        # Unrolled (tool slot, then server slot): this is the hot path of every limited call.
        tool_slots, server_slots = limits.slots, limits.server_slots
        if tool_slots is not None and not (
            tool_slots.try_take() or await tool_slots.take(self._left(started, queue_timeout))
        ):
            return self._busy(limits, "tool", downstream.name, tool, published)
        try:
            if server_slots is not None and not (
                server_slots.try_take() or await server_slots.take(self._left(started, queue_timeout))
            ):
                return self._busy(limits, "server", downstream.name, tool, published)
            try:
                limits.inflight += 1
                began = time.monotonic()
                try:
                    outcome = await self._run(downstream, tool, arguments, progress, published, definition, wire)
                finally:
                    limits.inflight -= 1
            finally:
                if server_slots is not None:
                    server_slots.release()
        finally:
            if tool_slots is not None:
                tool_slots.release()
        if isinstance(outcome, Rejection):
            if bucket is not None:
                bucket.refund()
        else:
            limits.finished(time.monotonic() - began)
        return outcome

    def _left(self, started: float, queue_timeout: float) -> float:
        """What is left of a call's `queue_timeout` (0 without one: no waiting)."""
        return started + queue_timeout - self._clock() if queue_timeout > 0 else 0.0

    def _busy(self, limits: ToolLimits, whose: str, server: str, tool: str, published: str) -> types.CallToolResult:
        if limits.bucket is not None:
            limits.bucket.refund()  # its token: the call never reached the downstream
        return self._refuse(limits, BUSY, limits.busy_retry_after(), server, tool, published, whose)

    def _refuse(
        self, limits: ToolLimits, reason: str, retry_after: float, server: str, tool: str, published: str,
        whose: str = "tool",
    ) -> types.CallToolResult:  # fmt: skip
        limits.limited[reason] += 1
        return limited_result(limits, reason, retry_after, server, tool, published, whose)

    async def _attempt(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        breaker: CircuitBreaker,
        policy: ToolPolicy,
        until: float | None = None,
        *,
        wire: bool = False,
    ) -> Answer:
        """Forward one call through the breaker's permit, or return the breaker's rejection. A counted failure
        comes back as `Failed` (the answer to give, and its kind); `until` caps the attempt's deadline."""
        permit = breaker.acquire()
        if permit.rejected:
            assert isinstance(permit, Rejection)
            return permit
        with traces.attempt(downstream.name, tool, breaker.state.value, permit) as permit:
            return await self._forward(downstream, tool, arguments, progress, policy, permit, until, wire)

    async def _forward(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        policy: ToolPolicy,
        permit: Permit,
        until: float | None,
        wire: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult | WireResult | Failed:
        """Send one admitted call under its deadline, classify how it ended and report it on `permit`."""
        meta = request_meta.current()
        deadline = Deadline(policy.call_timeout, policy.call_limit, progress, until)
        task = tasks.augmented()  # a task-augmented call (tasks.py): its answer is a task, a success
        direct = downstream.direct_path() if task is None else None
        params = wire_params(tool, arguments, meta) if direct is not None else None
        try:
            with deadline.scope:
                if params is not None:
                    assert direct is not None
                    raw = await downstream.call_direct(direct, params, deadline.on_progress)
                    plain = plain_result(raw) if wire else None
                    if plain is not None:  # a success as the wire has it: nothing to validate, nothing to classify
                        result: Any = WireResult(plain)
                    else:
                        result = types.CallToolResult.model_validate(raw, by_name=False)
                else:
                    request = types.CallToolRequest(
                        params=types.CallToolRequestParams(name=tool, arguments=arguments, _meta=meta)
                    )
                    if task is None:
                        result = await downstream.request_or_input(request, types.CallToolResult, deadline.on_progress)
                    else:
                        result = await tasks.send_call(downstream, request, task, deadline.on_progress)
            if deadline.scope.cancelled_caught:
                raise TimeoutError
        except TimeoutError:
            message = f"{deadline.describe()}; the request was cancelled"
            permit.failure("timeout", message)
            self._note(downstream.name, tool, "timeout")
            return Failed(error_result(f"Tool '{tool}' of server '{downstream.name}' timed out: {message}."), "timeout")
        except DownstreamUnavailableError:
            permit.release()  # the connection ended between the check in call() and now: not the tool's failure
            return unavailable_result(downstream, tool)
        except MCPError as exc:
            outcome = classify_error(exc)
            error = downstream.redact(outcome.error or "")
            _record(permit, Outcome(outcome.verdict, outcome.kind, error))
            self._note(downstream.name, tool, outcome.kind)
            if exc.error.code in CALLER_MISTAKES:
                raise
            if exc.error.code == types.INVALID_REQUEST and downstream.config.transport != "stdio":
                # The SDK's HTTP client reports a lost session with -32600: start afresh. A stdio child that
                # answers -32600 is alive and speaking: respawning it would cost every call in flight.
                downstream.request_reconnect()
            answer = error_result(f"Tool '{tool}' of server '{downstream.name}' failed: {error}")
            return Failed(answer, outcome.kind) if outcome.verdict is Verdict.FAILURE else answer
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            permit.failure("transport", downstream.redact(f"{type(exc).__name__}: {exc}"))
            self._note(downstream.name, tool, "transport")
            broke = error_result(f"Tool '{tool}' of server '{downstream.name}' failed: the connection broke.")
            return Failed(broke, "transport")
        except Exception as exc:  # a bug or a malformed answer: still one failure, still an answer
            logger.exception("call to %s/%s failed unexpectedly", downstream.name, tool)
            permit.failure("protocol", f"{type(exc).__name__}: {exc}")
            return Failed(
                error_result(
                    f"Tool '{tool}' of server '{downstream.name}' sent an answer circuitbox could not "
                    f"read ({type(exc).__name__})."
                ),
                "protocol",
            )
        except BaseException:
            permit.release()  # cancelled by the agent or by shutdown: neither success nor failure
            raise
        if result.__class__ is WireResult:  # a plain success (`plain_result`)
            permit.success()
            self._transport_failed.discard((downstream.name, tool))
            return result
        if isinstance(result, types.InputRequiredResult):  # a 2026-era server needs input first: it answered
            _record(permit, SUCCESS)
            return result
        outcome = classify_result(result, policy) if task is None else tasks.classify(result, policy)
        _record(permit, outcome)
        self._note(downstream.name, tool, outcome.kind)
        if outcome.verdict is Verdict.FAILURE:
            return Failed(result, outcome.kind)
        return result  # type: ignore[no-any-return]

    def _note(self, server: str, tool: str, kind: str) -> None:
        if kind == "transport":
            self._transport_failed.add((server, tool))
        else:
            self._transport_failed.discard((server, tool))


class Deadline:
    """A call's deadline: `call_timeout` from its start or from its last progress notification, never later than
    `limit` (`max_call_timeout`) from its start. Progress is relayed to the caller's own callback, if any."""

    def __init__(
        self, timeout: float, limit: float, relay: ProgressCallback | None, until: float | None = None
    ) -> None:
        self._timeout = timeout
        self._start = anyio.current_time()
        self._limit = self._start + limit
        self._until = until
        if until is not None and until < self._limit:  # a retried call's whole bound comes first
            self._limit = until
        self._relay = relay
        self.progressed = False
        self.scope = anyio.CancelScope(deadline=min(self._start + timeout, self._limit))

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progressed = True
        self.scope.deadline = min(anyio.current_time() + self._timeout, self._limit)
        if self._relay is not None:
            await self._relay(progress, total, message)

    def describe(self) -> str:
        if self._until is not None and self.scope.deadline >= self._until:
            return "no answer before the retries' bound (call_timeout x attempts) ran out"
        if not self.progressed:
            return f"no answer within call_timeout ({self._timeout:g}s)"
        if self.scope.deadline >= self._limit:
            return f"no answer within max_call_timeout ({self._limit - self._start:g}s), progress notwithstanding"
        return f"no answer nor progress for call_timeout ({self._timeout:g}s)"


async def _ready(answer: Answer) -> Answer:
    return answer


def _record(permit: Any, outcome: Outcome) -> None:
    if outcome.verdict is Verdict.SUCCESS:
        permit.success()
    elif outcome.verdict is Verdict.FAILURE:
        permit.failure(outcome.kind, outcome.error)
    else:
        permit.ignored()


def wire_params(tool: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """`CallToolRequestParams(name=tool, arguments=arguments, _meta=meta)` dumped as the downstream path dumps it
    (its fields' order, nothing that is None), built without the model; None when `meta` holds a None, which that
    dump would drop (rare: the typed path does it). A test holds the two to the same line."""
    if meta is None:
        return {"name": tool} if arguments is None else {"name": tool, "arguments": arguments}
    if None in meta.values():
        return None
    params: dict[str, Any] = {"_meta": meta, "name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    return params


def error_result(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, _meta=meta)


def limited_result(
    limits: ToolLimits,
    reason: str,
    retry_after: float,
    server: str,
    tool: str,
    published: str,
    whose: str = "tool",
) -> types.CallToolResult:
    """The answer to a call that was not made because of a limit: what limit, and when to retry."""
    if reason == RATE_LIMITED:
        rate = limits.rate
        assert rate is not None
        why = f"tool '{tool}' of server '{server}' is over its rate limit ({rate.calls} calls per {rate.per:g}s)"
        limit: dict[str, Any] = {"rate_limit": rate.table()}
    elif whose == "tool":
        assert limits.slots is not None
        why = f"tool '{tool}' of server '{server}' already has {limits.slots.limit} calls in flight (max_concurrent)"
        limit = {"max_concurrent": limits.slots.limit}
    else:
        assert limits.server_slots is not None
        cap = limits.server_slots.limit
        why = f"server '{server}' already has {cap} calls in flight (server_max_concurrent)"
        limit = {"server_max_concurrent": cap}
    waited = f" after waiting {limits.queue_timeout:g}s (queue_timeout)" if limits.queue_timeout else ""
    word = "rate limited" if reason == RATE_LIMITED else "busy"
    text = (
        f"Tool '{published}' was not called ({word}): {why}{waited}. Retry in {retry_after:.1f}s. This is "
        "circuitbox limiting calls, not a failure of the server."
    )
    data = {"reason": reason, "retry_after": retry_after, "server": server, "tool": tool, **limit}
    return error_result(text, {LIMIT_META_KEY: data})


def unavailable_result(downstream: Downstream, published: str) -> types.CallToolResult:
    """The answer to a call of a server that is not connected: at once, with when to retry."""
    state = downstream.state.value
    retry = downstream.retry_after()
    why = f": {downstream.last_error}" if downstream.last_error else ""
    shown = f"in a crash loop (restarted {downstream.restarts} times)" if state == "crash_loop" else state
    text = (
        f"Tool '{published}' was not called: server '{downstream.name}' is {shown}{why}. Retry in {math.ceil(retry)} s."
    )
    data = {"server": downstream.name, "connection": state, "retry_after": retry, "last_error": downstream.last_error}
    return error_result(text, {SERVER_META_KEY: data})


def rejection_result(server: str, tool: str, published: str, rejection: Rejection) -> types.CallToolResult:
    """The fast-fail answer: readable text plus the same facts as data under `_meta["circuitbox/breaker"]`."""
    text, data = _rejection_parts(server, tool, published, rejection)
    return error_result(text, {META_KEY: data})


def rejection_wire(server: str, tool: str, published: str, rejection: Rejection) -> dict[str, Any]:
    """`rejection_result` as the wire has it in every handshake-era version (the SDK's dump and per-version sieve
    give exactly this; a test holds them to it), built without a model: the fast-fail path's cost is in models."""
    text, data = _rejection_parts(server, tool, published, rejection)
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": {META_KEY: data}}


def _rejection_parts(server: str, tool: str, published: str, rejection: Rejection) -> tuple[str, dict[str, Any]]:
    state = str(rejection.state)
    retry = rejection.retry_after
    when = f"the next probe is allowed in {retry:.1f}s" if retry is not None else "an operator has forced it open"
    last = f" The last error was: {rejection.last_error}." if rejection.last_error else ""
    text = (
        f"Tool '{published}' was not called: the circuit breaker for tool '{tool}' of server '{server}' is "
        f"{state.replace('_', '-')}, so circuitbox is failing fast instead of waiting on a failing server;"
        f" {when}.{last} Try again later or use another tool."
    )
    data = {
        "state": state,
        "retry_after": retry,
        "last_error": rejection.last_error,
        "server": server,
        "tool": tool,
    }
    return text, data
