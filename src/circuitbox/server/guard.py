"""The guarded call: permit, forward under the deadline, classify, record.

One breaker per (server, tool), created on first use from the effective policy. Every failure on the downstream
side becomes an `isError` result the agent can read; only the agent's own mistakes (bad arguments, as the
downstream reports them) travel back as JSON-RPC errors.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, Permit, Rejection
from circuitbox.config.load import ConfigError, ProxyConfig
from circuitbox.config.policy import TextFallback, ToolFallback, ToolPolicy, retune
from circuitbox.observability import traces
from circuitbox.server.classify import CALLER_MISTAKES, Outcome, Verdict, classify_error, classify_result
from circuitbox.server.downstream import Downstream, DownstreamUnavailableError, ProgressCallback

logger = logging.getLogger("circuitbox.guard")

META_KEY = "circuitbox/breaker"
SERVER_META_KEY = "circuitbox/server"


def breaker_name(server: str, tool: str) -> str:
    return f"{server}__{tool}"


# A published tool name -> (its downstream owner, the tool as that downstream names it), or None.
Resolver = Callable[[str], "tuple[Downstream, str] | None"]


class Guard:
    """Owns the (server, tool) breakers of one proxy and runs calls through them."""

    def __init__(
        self,
        config: ProxyConfig,
        registry: BreakerRegistry,
        *,
        on_new_breaker: Callable[[CircuitBreaker, str, str], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
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

    def breaker(self, server: str, tool: str) -> tuple[CircuitBreaker, ToolPolicy]:
        key = (server, tool)
        found = self._breakers.get(key)
        if found is None:
            policy = self._with_overrides(server, tool, self.config.policy(server, tool))
            breaker = self.registry.get_or_create(breaker_name(server, tool), policy.breaker)
            found = self._breakers[key] = (breaker, policy)
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
        changed = []
        for server, tool, new in plan:
            breaker, policy = self._breakers[(server, tool)]
            if new != policy:
                if new.breaker != policy.breaker:
                    breaker.reconfigure(new.breaker)
                self._breakers[(server, tool)] = (breaker, new)
                changed.append((server, tool))
        return changed

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
            changed.append((tool, {k: (policy.value(k), new.value(k), new.sources[k]) for k in settings}))
        return changed

    def policies_of(self, server: str) -> list[tuple[str, CircuitBreaker, ToolPolicy]]:
        return [(tool, breaker, policy) for (srv, tool), (breaker, policy) in self._breakers.items() if srv == server]

    def known(self) -> list[tuple[str, str, CircuitBreaker]]:
        """Every breaker created so far, as (server, tool, breaker)."""
        return [(server, tool, breaker) for (server, tool), (breaker, _) in self._breakers.items()]

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
        found = self._breakers.pop((server, tool), None)
        if found is not None:
            name = found[0].name
            self.registry.remove(name)
            self._labels.pop(name, None)
            if self._on_forget is not None:
                self._on_forget(name)

    async def call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None = None,
        *,
        published: str,
        resolve: Resolver | None = None,
    ) -> types.CallToolResult:
        """One guarded call, answered: the downstream's result, a failure as an `isError` result, or, when the
        circuit rejects it, the fallback (text, or another tool `resolve` routes, guarded by its own breaker, one
        level deep) or the rejection's answer.

        A call to a server that is not connected (starting, restarting, down) is answered at once and counts against
        no breaker: the server's connection state already says what is wrong, and a breaker opened by a restart
        would keep failing calls after the server is back.

        Raises:
            MCPError: the agent's own mistake, as the downstream reported it (invalid params, unknown tool).
        """
        if downstream.session is None:
            refusal = unavailable_result(downstream, published)
            return await self._fall_back(downstream, tool, arguments, progress, refusal, resolve) or refusal
        outcome = await self._attempt(downstream, tool, arguments, progress)
        if not isinstance(outcome, Rejection):
            return outcome
        rejected = rejection_result(downstream.name, tool, published, outcome)
        return await self._fall_back(downstream, tool, arguments, progress, rejected, resolve) or rejected

    async def _fall_back(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        refusal: types.CallToolResult,
        resolve: Resolver | None,
    ) -> types.CallToolResult | None:
        """The fallback's answer to a call that was not made, or None without one."""
        try:
            breaker, policy = self.breaker(downstream.name, tool)
        except (ConfigError, ValueError):
            return None
        fallback = policy.fallback
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
            # Without a resolver: the fallback's own fallback may be text, never another hop (no cycles).
            return await self.call(other, other_tool, arguments, progress, published=fallback.tool)
        return None

    async def _attempt(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
    ) -> types.CallToolResult | Rejection:
        """Forward one call through the breaker's permit, or return the breaker's rejection."""
        try:
            breaker, policy = self.breaker(downstream.name, tool)
        except (ConfigError, ValueError) as exc:  # a policy only this tool's name makes invalid: still an answer
            logger.error("no valid policy for %s/%s: %s", downstream.name, tool, exc)
            return error_result(f"Tool '{tool}' of server '{downstream.name}' has an invalid circuit policy: {exc}")
        permit = breaker.acquire()
        if permit.rejected:
            assert isinstance(permit, Rejection)
            return permit
        with traces.attempt(downstream.name, tool, breaker.state.value, permit) as permit:
            return await self._forward(downstream, tool, arguments, progress, policy, permit)

    async def _forward(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None,
        policy: ToolPolicy,
        permit: Permit,
    ) -> types.CallToolResult:
        """Send one admitted call under its deadline, classify how it ended and report it on `permit`."""
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments))
        deadline = Deadline(policy.call_timeout, policy.call_limit, progress)
        try:
            with deadline.scope:
                result = await downstream.request(request, types.CallToolResult, deadline.on_progress)
            if deadline.scope.cancelled_caught:
                raise TimeoutError
        except TimeoutError:
            message = f"{deadline.describe()}; the request was cancelled"
            permit.failure("timeout", message)
            self._note(downstream.name, tool, "timeout")
            return error_result(f"Tool '{tool}' of server '{downstream.name}' timed out: {message}.")
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
            return error_result(f"Tool '{tool}' of server '{downstream.name}' failed: {error}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            permit.failure("transport", downstream.redact(f"{type(exc).__name__}: {exc}"))
            self._note(downstream.name, tool, "transport")
            return error_result(f"Tool '{tool}' of server '{downstream.name}' failed: the connection broke.")
        except Exception as exc:  # a bug or a malformed answer: still one failure, still an answer
            logger.exception("call to %s/%s failed unexpectedly", downstream.name, tool)
            permit.failure("protocol", f"{type(exc).__name__}: {exc}")
            return error_result(
                f"Tool '{tool}' of server '{downstream.name}' sent an answer circuitbox could not "
                f"read ({type(exc).__name__})."
            )
        except BaseException:
            permit.release()  # cancelled by the agent or by shutdown: neither success nor failure
            raise
        outcome = classify_result(result, policy)
        _record(permit, outcome)
        self._note(downstream.name, tool, outcome.kind)
        return result

    def _note(self, server: str, tool: str, kind: str) -> None:
        if kind == "transport":
            self._transport_failed.add((server, tool))
        else:
            self._transport_failed.discard((server, tool))


class Deadline:
    """A call's deadline: `call_timeout` from its start or from its last progress notification, never later than
    `limit` (`max_call_timeout`) from its start. Progress is relayed to the caller's own callback, if any."""

    def __init__(self, timeout: float, limit: float, relay: ProgressCallback | None) -> None:
        self._timeout = timeout
        self._start = anyio.current_time()
        self._limit = self._start + limit
        self._relay = relay
        self.progressed = False
        self.scope = anyio.CancelScope(deadline=min(self._start + timeout, self._limit))

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progressed = True
        self.scope.deadline = min(anyio.current_time() + self._timeout, self._limit)
        if self._relay is not None:
            await self._relay(progress, total, message)

    def describe(self) -> str:
        if not self.progressed:
            return f"no answer within call_timeout ({self._timeout:g}s)"
        if self.scope.deadline >= self._limit:
            return f"no answer within max_call_timeout ({self._limit - self._start:g}s), progress notwithstanding"
        return f"no answer nor progress for call_timeout ({self._timeout:g}s)"


def _record(permit: Any, outcome: Outcome) -> None:
    if outcome.verdict is Verdict.SUCCESS:
        permit.success()
    elif outcome.verdict is Verdict.FAILURE:
        permit.failure(outcome.kind, outcome.error)
    else:
        permit.ignored()


def error_result(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, _meta=meta)


def unavailable_result(downstream: Downstream, published: str) -> types.CallToolResult:
    """The answer to a call of a server that is not connected: at once, with when to retry."""
    state = downstream.state.value
    retry = downstream.retry_after()
    why = f": {downstream.last_error}" if downstream.last_error else ""
    text = (
        f"Tool '{published}' was not called: server '{downstream.name}' is {state}{why}. Retry in {math.ceil(retry)} s."
    )
    data = {"server": downstream.name, "connection": state, "retry_after": retry, "last_error": downstream.last_error}
    return error_result(text, {SERVER_META_KEY: data})


def rejection_result(server: str, tool: str, published: str, rejection: Rejection) -> types.CallToolResult:
    """The fast-fail answer: readable text plus the same facts as data under `_meta["circuitbox/breaker"]`."""
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
    return error_result(text, {META_KEY: data})
