"""The guard's retries and last-known-good answers in process, against a scripted downstream, on trio's mock clock
(the end-to-end behaviour with real processes is in test_retries.py and test_last_known_good.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
import pytest
import trio
import trio.testing
from mcp import MCPError

from circuitbox.breakers import BreakerRegistry, CircuitState
from circuitbox.breakers.testing import FakeClock
from circuitbox.config.load import parse_config
from circuitbox.config.policy import RetryPolicy
from circuitbox.server import retry as retry_module
from circuitbox.server.downstream import Downstream
from circuitbox.server.guard import META_KEY, SERVER_META_KEY, Guard
from circuitbox.server.retry import BUDGET_FLOOR, RetryBudget, backoff, may_retry
from circuitbox.server.stale import STALE_META_KEY, KeptAnswers, arguments_key

READ_ONLY = types.Tool(
    name="c__get", input_schema={"type": "object"}, annotations=types.ToolAnnotations(read_only_hint=True)
)
PLAIN = types.Tool(name="c__put", input_schema={"type": "object"})


def ok(text: str = "fine") -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)])


class Scripted(Downstream):
    """A connected downstream whose answers come from a script: a result, an exception to raise, or "hang"."""

    def __init__(self, config: Any, script: list[Any]) -> None:
        super().__init__(config)
        self.session = object()  # type: ignore[assignment]
        self.script = script
        self.sent: list[dict[str, Any] | None] = []

    async def request(self, request: Any, result_type: Any, progress: Any = None) -> Any:
        self.sent.append(request.params.arguments)
        step = self.script.pop(0) if self.script else ok()
        if step == "hang":
            await trio.sleep_forever()
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(self)
        return step


def setup(breaker: dict[str, Any], script: list[Any], **guard: Any) -> tuple[Guard, Scripted, list[tuple[str, str]]]:
    config = parse_config(
        {"environment": "testing", "mcpServers": {"c": {"command": "unused", "breaker": breaker}}}, env={}
    )
    counted: list[tuple[str, str]] = []
    g = Guard(config, BreakerRegistry(), on_count=lambda name, what: counted.append((name, what)), **guard)
    return g, Scripted(config.servers["c"], script), counted


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def text(result: types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


RETRY = {"call_timeout": 1, "retry": {"attempts": 3, "backoff": 0.1}, "failure_threshold": 50, "jitter": 0}


def test_a_transport_error_is_retried_and_every_attempt_counts_in_the_breaker() -> None:
    guard, down, counted = setup(RETRY, [OSError("pipe closed"), ok("second")])

    async def main() -> types.CallToolResult:
        return await guard.call(down, "get", {"q": 1}, published="c__get", definition=READ_ONLY)

    answer = run(main)
    assert text(answer) == "second" and len(down.sent) == 2
    assert counted == [("c__get", "retries")]
    snap = guard.breaker("c", "get")[0].snapshot()
    assert (snap.failures, snap.successes) == (1, 1)


def test_only_timeouts_and_transport_errors_are_retried() -> None:
    protocol = MCPError(types.INTERNAL_ERROR, "boom")
    distress = types.CallToolResult(content=[types.TextContent(text="service unavailable")], is_error=True)
    for script in ([protocol], [distress]):
        guard, down, counted = setup(RETRY, list(script))

        async def main(g: Guard = guard, d: Scripted = down) -> types.CallToolResult:
            return await g.call(d, "get", {}, published="c__get", definition=READ_ONLY)

        assert run(main).is_error and len(down.sent) == 1 and counted == []


def test_no_retry_once_the_server_is_gone_or_when_the_wait_would_pass_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disconnect(d: Scripted) -> Any:
        d.session = None
        raise OSError("gone")

    guard, down, _ = setup(RETRY, [disconnect, ok()])

    async def main() -> types.CallToolResult:
        return await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)

    assert run(main).is_error and len(down.sent) == 1

    monkeypatch.setattr(retry_module.random, "uniform", lambda low, high: 10.0)  # past call_timeout x attempts
    guard, down, _ = setup(RETRY, [OSError("x"), ok()])

    async def again() -> types.CallToolResult:
        return await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)

    assert run(again).is_error and len(down.sent) == 1


def test_the_whole_retried_call_answers_within_call_timeout_times_attempts() -> None:
    guard, down, counted = setup(RETRY, ["hang", "hang", "hang", "hang"])

    async def main() -> tuple[types.CallToolResult, float]:
        began = trio.current_time()
        answer = await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)
        return answer, trio.current_time() - began

    answer, took = run(main)
    assert answer.is_error and "timed out" in text(answer)
    assert took <= 3.0 and len(down.sent) == 3 and counted == [("c__get", "retries")] * 2


def test_a_retry_never_passes_an_open_circuit() -> None:
    guard, down, counted = setup({**RETRY, "failure_threshold": 1, "timeout": 60}, [OSError("x"), ok()])

    async def main() -> types.CallToolResult:
        return await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)

    answer = run(main)
    assert answer.is_error and META_KEY in (answer.meta or {})  # the rejection's answer
    assert len(down.sent) == 1 and counted == []


def test_which_tools_may_be_retried() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "c": {
                    "command": "x",
                    "breaker": {"retry": {"attempts": 2}},
                    "tools": {
                        "one": {"retry": {"attempts": 1}},
                        "marked": {"idempotent": True},
                        "off": {"retry": None},
                    },
                }
            }
        },
        env={},
    )
    idempotent = types.Tool(
        name="i", input_schema={"type": "object"}, annotations=types.ToolAnnotations(idempotent_hint=True)
    )
    policy = config.policy("c", "t")
    assert may_retry(policy, READ_ONLY) == RetryPolicy(attempts=2)
    assert may_retry(policy, idempotent) == RetryPolicy(attempts=2)
    assert may_retry(policy, PLAIN) is None and may_retry(policy, None) is None
    assert may_retry(config.policy("c", "marked"), PLAIN) == RetryPolicy(attempts=2)
    assert may_retry(config.policy("c", "one"), READ_ONLY) is None  # one attempt: nothing to retry
    assert may_retry(config.policy("c", "off"), READ_ONLY) is None


def test_backoff_is_full_jitter_up_to_the_exponential_cap() -> None:
    retry = RetryPolicy(attempts=5, backoff=0.5, max_backoff=3)
    highest = [backoff(retry, n, rng=lambda low, high: high) for n in (1, 2, 3, 4)]
    assert highest == [0.5, 1.0, 2.0, 3.0]
    assert backoff(retry, 2, rng=lambda low, high: low) == 0.0


def test_the_budget_allows_a_fraction_of_recent_calls_plus_a_floor_and_forgets_after_ten_seconds() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(0.2, clock)
    allowed = 0
    while budget.allows():
        budget.spent()
        allowed += 1
    assert allowed == BUDGET_FLOOR  # no calls yet: the floor alone
    for _ in range(10):
        budget.called()
    assert budget.allows()
    budget.spent()
    budget.spent()
    assert not budget.allows()  # 0.2 x 10 + 3 = 5 spent
    clock.advance(10)
    assert budget.allows()  # the window moved past all of it


def test_kept_answers_are_least_recently_used_first_out_and_expire_by_max_age() -> None:
    kept = KeptAnswers(max_entries=2)
    kept.keep("a", ok("a"), 0.0)
    kept.keep("b", ok("b"), 1.0)
    assert kept.find("a", 100, 2.0) is not None  # a is now the most recently used
    kept.keep("c", ok("c"), 3.0)
    assert len(kept) == 2 and kept.find("b", 100, 3.0) is None
    found = kept.find("a", 100, 5.0)
    assert found is not None and found[1] == 5.0
    assert kept.find("a", 4.9, 5.0) is None and len(kept) == 1  # too old: not served, and dropped
    assert arguments_key({"b": 1, "a": [1, 2]}) == arguments_key({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


LKG = {"call_timeout": 1, "failure_threshold": 50, "jitter": 0, "fallback": {"last_known_good": {"max_age": 60}}}


def test_a_failed_call_of_a_read_only_tool_gets_its_last_good_answer_for_the_same_arguments() -> None:
    clock = FakeClock()
    failing = types.CallToolResult(content=[types.TextContent(text="upstream unavailable")], is_error=True)
    guard, down, counted = setup(LKG, [ok("v1"), failing, failing, failing, ok("w"), failing], clock=clock)

    async def call(args: dict[str, Any], definition: types.Tool = READ_ONLY) -> types.CallToolResult:
        return await guard.call(down, "get", args, published="c__get", definition=definition)

    async def main() -> list[types.CallToolResult]:
        out = [await call({"a": 1, "b": 2})]
        clock.advance(12)
        out.append(await call({"b": 2, "a": 1}))  # same arguments, another key order
        out.append(await call({"a": 2}))  # nothing kept for these
        clock.advance(60)
        out.append(await call({"a": 1, "b": 2}))  # kept, but older than max_age now
        out.append(await call({"x": 1}, PLAIN))  # a tool that is not read-only keeps nothing...
        out.append(await call({"x": 1}, PLAIN))  # ...and never gets a stale answer
        return out

    first, stale, other, expired, _, plain = run(main)
    assert not first.is_error
    assert not stale.is_error and (stale.meta or {})[STALE_META_KEY] == {"age": 12.0}
    assert text(stale).startswith("[stale answer] Tool 'c__get' failed just now") and text(stale).endswith("v1")
    assert other.is_error and STALE_META_KEY not in (other.meta or {})
    assert expired.is_error and plain.is_error
    assert counted == [("c__get", "stale_answers")]


def test_a_rejected_or_unavailable_call_gets_the_stale_answer_else_the_text_that_comes_with_it() -> None:
    breaker = {**LKG, "fallback": {"last_known_good": {"max_age": 60}, "text": "no copy kept"}}
    guard, down, counted = setup(breaker, [ok("v1")], clock=FakeClock())

    async def call(args: dict[str, Any]) -> types.CallToolResult:
        return await guard.call(down, "get", args, published="c__get", definition=READ_ONLY)

    async def main() -> list[types.CallToolResult]:
        out = [await call({"a": 1})]
        guard.breaker("c", "get")[0].force(CircuitState.FORCED_OPEN)
        out += [await call({"a": 1}), await call({"a": 2})]
        down.session = None
        out.append(await call({"a": 1}))
        return out

    _, rejected, text_answer, unavailable = run(main)
    assert META_KEY in (rejected.meta or {}) and STALE_META_KEY in (rejected.meta or {})
    assert "its circuit breaker is open" in text(rejected)
    assert text(text_answer) == "no copy kept"
    assert SERVER_META_KEY in (unavailable.meta or {}) and "its server is not connected" in text(unavailable)
    assert counted == [("c__get", "stale_answers")] * 2
    assert guard.breaker("c", "get")[0].snapshot().calls == 1


def test_a_tool_whose_merged_policy_is_invalid_is_answered_with_the_problem() -> None:
    config = parse_config(
        {"mcpServers": {"c": {"command": "unused", "tools": {"a*": {"timeout": 500}, "ab*": {"max_timeout": 400}}}}},
        env={},
    )
    guard = Guard(config, BreakerRegistry())
    down = Scripted(config.servers["c"], [])

    async def main() -> types.CallToolResult:
        return await guard.call(down, "abc", {}, published="c__abc")

    answer = run(main)
    assert answer.is_error and "has an invalid circuit policy" in text(answer) and down.sent == []


def test_a_retuned_budget_takes_effect_and_a_forgotten_tool_keeps_nothing() -> None:
    guard, down, counted = setup({**RETRY, "retry": {"attempts": 2, "backoff": 0, "budget": 0}}, [])
    down.script = [OSError("x"), ok()] * 5

    async def call() -> types.CallToolResult:
        return await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)

    async def main() -> None:
        for _ in range(BUDGET_FLOOR + 1):
            await call()  # the floor's 3 retries, then none: the 4th call fails at its first attempt
        assert counted == [("c__get", "retries")] * BUDGET_FLOOR
        guard.configure("c", "get", {"retry": {"attempts": 2, "backoff": 0, "budget": 10}})
        assert not (await call()).is_error  # a new budget, with room

    run(main)
    guard.forget("c", "get")
    assert guard.known() == [] and guard._budgets == {} and guard._kept == {}


def test_without_a_counter_retries_and_stale_answers_still_work_and_the_latest_good_result_is_kept() -> None:
    config = parse_config(
        {"mcpServers": {"c": {"command": "unused", "breaker": {**RETRY, **LKG, "retry": {"attempts": 2}}}}}, env={}
    )
    guard = Guard(config, BreakerRegistry(), clock=FakeClock())  # no on_count: nothing to tell
    down = Scripted(config.servers["c"], [ok("v1"), ok("v2"), OSError("x"), ok("v3"), OSError("x"), OSError("x")])

    async def call() -> types.CallToolResult:
        return await guard.call(down, "get", {}, published="c__get", definition=READ_ONLY)

    async def main() -> list[str]:
        return [text(await call()) for _ in range(4)]

    answers = run(main)
    assert answers[:3] == ["v1", "v2", "v3"]  # the third call was retried
    assert answers[3].startswith("[stale answer]") and answers[3].endswith("v3")  # the latest kept, not the first
