"""The guarded call: permit, forward under the deadline, classify, record.

One breaker per (server, tool), created on first use from the effective policy. Every failure on the downstream
side becomes an `isError` result the agent can read; only the agent's own mistakes (bad arguments, as the
downstream reports them) travel back as JSON-RPC errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
from circuitbox.server.config import ProxyConfig
from circuitbox.server.policy import ToolPolicy
from mcp import MCPError

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, Rejection
from circuitbox.server.classify import CALLER_MISTAKES, Outcome, Verdict, classify_error, classify_result
from circuitbox.server.downstream import Downstream, DownstreamUnavailableError, ProgressCallback

logger = logging.getLogger("circuitbox.guard")

META_KEY = "circuitbox/breaker"


def breaker_name(server: str, tool: str) -> str:
    return f"{server}__{tool}"


class Guard:
    """Owns the (server, tool) breakers of one proxy and runs calls through them."""

    def __init__(
        self,
        config: ProxyConfig,
        registry: BreakerRegistry,
        *,
        on_new_breaker: Callable[[CircuitBreaker, str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self._breakers: dict[tuple[str, str], tuple[CircuitBreaker, ToolPolicy]] = {}
        self._on_new_breaker = on_new_breaker

    def breaker(self, server: str, tool: str) -> tuple[CircuitBreaker, ToolPolicy]:
        key = (server, tool)
        found = self._breakers.get(key)
        if found is None:
            policy = self.config.policy(server, tool)
            breaker = self.registry.get_or_create(breaker_name(server, tool), policy.breaker)
            found = self._breakers[key] = (breaker, policy)
            if self._on_new_breaker is not None:
                self._on_new_breaker(breaker, server, tool)
        return found

    def known(self) -> list[tuple[str, str, CircuitBreaker]]:
        """Every breaker created so far, as (server, tool, breaker)."""
        return [(server, tool, breaker) for (server, tool), (breaker, _) in self._breakers.items()]

    def find(self, server: str, tool: str) -> CircuitBreaker | None:
        found = self._breakers.get((server, tool))
        return found[0] if found else None

    def forget(self, server: str, tool: str) -> None:
        found = self._breakers.pop((server, tool), None)
        if found is not None:
            self.registry.remove(found[0].name)

    async def call(
        self,
        downstream: Downstream,
        tool: str,
        arguments: dict[str, Any] | None,
        progress: ProgressCallback | None = None,
    ) -> types.CallToolResult | Rejection:
        """Forward one call, or return the breaker's rejection for the caller to turn into an answer.

        Raises:
            MCPError: the agent's own mistake, as the downstream reported it (invalid params, unknown tool).
        """
        breaker, policy = self.breaker(downstream.name, tool)
        permit = breaker.acquire()
        if permit.rejected:
            assert isinstance(permit, Rejection)
            return permit
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments))
        try:
            with anyio.fail_after(policy.call_timeout):
                result = await downstream.request(request, types.CallToolResult, progress)
        except TimeoutError:
            message = f"no answer within call_timeout ({policy.call_timeout:g}s); the request was cancelled"
            permit.failure("timeout", message)
            return error_result(f"Tool '{tool}' of server '{downstream.name}' timed out: {message}.")
        except DownstreamUnavailableError as exc:
            permit.failure("transport", str(exc))
            return error_result(f"Tool '{tool}' is unavailable: {exc}. circuitbox is reconnecting to it.")
        except MCPError as exc:
            outcome = classify_error(exc)
            _record(permit, outcome)
            if exc.error.code in CALLER_MISTAKES:
                raise
            return error_result(f"Tool '{tool}' of server '{downstream.name}' failed: {outcome.error}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            permit.failure("transport", f"{type(exc).__name__}: {exc}")
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
        _record(permit, classify_result(result, policy))
        return result


def _record(permit: Any, outcome: Outcome) -> None:
    if outcome.verdict is Verdict.SUCCESS:
        permit.success()
    elif outcome.verdict is Verdict.FAILURE:
        permit.failure(outcome.kind, outcome.error)
    else:
        permit.ignored()


def error_result(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, _meta=meta)


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
