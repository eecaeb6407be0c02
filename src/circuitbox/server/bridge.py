"""The era bridge: a 2026-era client's tool call to a handshake-era downstream that asks something mid-call.

A handshake-era server asks its client (sampling, elicitation, roots) with a request of its own while the call is
in flight. A 2026-era client has no channel for that: it expects the call to end with an input-required result
(`resultType: "input_required"`, `inputRequests`, `requestState`) and retries the call with `inputResponses` and the
`requestState` echoed. So the downstream call keeps running in the proxy's task group while its question goes back to
the client as an input-required result; the retry's answer is fed to the waiting downstream request, and the retry
gets the call's result, or its next question.

`requestState` is a random token that names one parked call (attacker-controlled on the way back, so it grants
nothing but the answer to that call's question, and only for the same tool). A call nobody resumes within
`PARK_TTL` seconds is cancelled (its downstream request too).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from pydantic import BaseModel

logger = logging.getLogger("circuitbox.bridge")
Outcome = types.CallToolResult | types.InputRequiredResult  # a bridged downstream never needs input itself

PARK_TTL = 600.0  # as the SDK seals its own request states: ten minutes to answer


@dataclass
class _Question:
    key: str
    request: Any  # CreateMessageRequest | ElicitRequest | ListRootsRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None


@dataclass
class _Done:
    result: types.CallToolResult | types.InputRequiredResult | None = None
    error: BaseException | None = None


class _BridgedSession:
    """What `Callers.relay` asks (`send_request`): the question is parked on the call instead of being sent."""

    def __init__(self, call: ParkedCall, capabilities: types.ClientCapabilities | None) -> None:
        self._call = call
        self.client_capabilities = capabilities  # what the client declared in its request's _meta

    async def send_request(self, request: Any, result_type: type[BaseModel], **_: Any) -> Any:
        return await self._call.ask(request, result_type)


class ParkedCall:
    """One bridged call: the downstream call's task and the questions it asked that are not answered yet."""

    request_id: types.RequestId | None = None  # Callers.relay names the upstream request; there is none to name

    def __init__(self, tool: str, capabilities: types.ClientCapabilities | None) -> None:
        self.tool = tool
        self.session = _BridgedSession(self, capabilities)
        self.scope = anyio.CancelScope()
        self.progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None
        self._capabilities = capabilities
        self._events: deque[_Question | _Done] = deque()  # what the client's next request learns, in order
        self._arrived = anyio.Event()
        self._open: dict[str, _Question] = {}
        self._count = 0

    async def ask(self, request: Any, result_type: type[BaseModel]) -> Any:
        """Park a downstream's question until the client's retry answers it.

        Raises:
            MCPError: the client did not declare the capability (a 2026-era client that fails a question aborts its
                call instead of answering: the question then waits until `PARK_TTL`).
        """
        if not _declared(self._capabilities, request):
            raise MCPError(
                code=types.METHOD_NOT_FOUND, message=f"the client did not declare support for {request.method}"
            )
        self._count += 1
        question = _Question(f"{request.method}#{self._count}", request)
        self._open[question.key] = question
        self._put(question)
        await question.answered.wait()
        answer = question.answer
        if isinstance(answer, BaseModel):  # parsed as any of the input responses: read again as what was asked
            answer = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
        return result_type.model_validate(answer, by_name=False)

    def answer(self, responses: dict[str, Any]) -> None:
        for key, response in responses.items():
            question = self._open.pop(key, None)
            if question is not None:
                question.answer = response
                question.answered.set()

    async def run(self, call: Callable[[ParkedCall], Awaitable[Outcome]]) -> None:
        with self.scope:
            try:
                self._put(_Done(result=await call(self)))
            except Exception as exc:
                self._put(_Done(error=exc))

    def _put(self, event: _Question | _Done) -> None:
        self._events.append(event)
        self._arrived.set()

    async def next(self) -> Outcome | list[_Question]:
        """The call's result, or the questions it waits on (all that are queued now).

        Raises:
            whatever the call raised (an unknown tool, arguments the downstream rejected).
        """
        while not self._events:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        if isinstance(self._events[0], _Done):
            done = self._events.popleft()
            assert isinstance(done, _Done)
            if done.error is not None:
                raise done.error
            assert done.result is not None
            return done.result
        asked: list[_Question] = []
        while self._events and isinstance(self._events[0], _Question):
            question = self._events.popleft()
            assert isinstance(question, _Question)
            asked.append(question)
        return asked


def _declared(capabilities: types.ClientCapabilities | None, request: Any) -> bool:
    if capabilities is None:
        return False
    if isinstance(request, types.CreateMessageRequest):
        return capabilities.sampling is not None
    if isinstance(request, types.ElicitRequest):
        return capabilities.elicitation is not None
    return capabilities.roots is not None


class Bridge:
    """The parked calls of 2026-era clients, by their `requestState`."""

    def __init__(self) -> None:
        self._parked: dict[str, ParkedCall] = {}

    async def call(
        self,
        tg: anyio.abc.TaskGroup,
        params: types.CallToolRequestParams,
        capabilities: types.ClientCapabilities | None,
        start: Callable[[ParkedCall], Awaitable[Outcome]],
        progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A tool call of a 2026-era client: a fresh one starts the call, a retry resumes the call it names.

        Raises:
            MCPError: -32602, a `requestState` that names no parked call of this tool (unknown, expired, used).
        """
        if params.request_state is None:
            parked = ParkedCall(params.name, capabilities)
            tg.start_soon(parked.run, start, name=f"bridged call {params.name}")
        else:
            found = self._parked.pop(params.request_state, None)
            if found is None or found.tool != params.name:
                raise MCPError(
                    code=types.INVALID_PARAMS,
                    message="requestState names no call in progress (unknown, expired or already answered)",
                )
            parked = found
            parked.answer(dict(params.input_responses or {}))
        parked.progress = progress
        try:
            outcome = await parked.next()
        except BaseException:
            parked.scope.cancel()
            raise
        finally:
            parked.progress = None
        if not isinstance(outcome, list):
            return outcome
        token = secrets.token_urlsafe(24)
        self._parked[token] = parked
        tg.start_soon(self._expire, token, parked, name="bridged call expiry")
        return types.InputRequiredResult(input_requests={q.key: q.request for q in outcome}, request_state=token)

    async def _expire(self, token: str, parked: ParkedCall) -> None:
        await anyio.sleep(PARK_TTL)
        if self._parked.get(token) is parked:
            del self._parked[token]
            logger.warning(
                "a 2026-era client did not answer %s's question in %gs: call cancelled", parked.tool, PARK_TTL
            )
            parked.scope.cancel()
