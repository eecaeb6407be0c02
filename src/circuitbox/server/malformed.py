"""The JSON-RPC answer the spec gives a malformed upstream message, on stdio and HTTP alike.

- not JSON at all: -32700 Parse error, id null;
- a batch (an array; MCP removed batching in 2025-06-18), anything but an object, an id that is neither a string nor
  an integer (null, a float, a boolean, an object): -32600 Invalid Request, id null (no id can be named);
- an object with a usable id but no method, a method that is not a string, a wrong `jsonrpc` or params of the wrong
  shape: -32600 with that id;
- a malformed notification or response: dropped with a logged warning (the spec answers neither).

The SDK's envelope model ignores unknown keys, so `{"id": 1.5, "method": "ping"}` validates as a *notification* and
would vanish unanswered: a notification whose line mentions `"id"` is checked against the raw JSON (notifications
are rare; requests pay nothing for this).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

logger = logging.getLogger("circuitbox.malformed")

BATCH = (
    "Invalid request: JSON-RPC batches are not supported (MCP removed them in protocol version 2025-06-18); "
    "send one message at a time"
)


class MalformedMessage(Exception):
    """An upstream message that is not valid JSON-RPC: `answer` is what the client gets (None: dropped, logged)."""

    def __init__(self, reason: str, answer: types.JSONRPCError | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


def _refuse(code: int, message: str, request_id: types.RequestId | None = None) -> MalformedMessage:
    error = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))
    return MalformedMessage(message, error)


def usable_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def judge(data: object, detail: str = "") -> MalformedMessage:
    """What to answer a decoded JSON value that is not a valid JSON-RPC message (`detail`: the validator's words)."""
    if isinstance(data, list):
        return _refuse(types.INVALID_REQUEST, BATCH if data else "Invalid request: an empty batch")
    if not isinstance(data, Mapping):
        return _refuse(types.INVALID_REQUEST, "Invalid request: a JSON-RPC message is a JSON object")
    is_response = "method" not in data and ("result" in data or "error" in data)
    if is_response:
        return MalformedMessage("a malformed response was dropped", None)
    if "id" not in data:
        return MalformedMessage("a malformed notification was dropped", None)
    request_id = data["id"]
    if not usable_id(request_id):
        return _refuse(types.INVALID_REQUEST, "Invalid request: the id must be a string or an integer")
    if "method" not in data:
        problem = "no method"
    elif not isinstance(data["method"], str):
        problem = "the method must be a string"
    elif data.get("jsonrpc") != "2.0":
        problem = 'jsonrpc must be "2.0"'
    else:
        problem = detail or "not a valid request"
    return _refuse(types.INVALID_REQUEST, f"Invalid request: {problem}", request_id)


def parse_line(line: bytes) -> SessionMessage | Exception:
    """One upstream stdio line: the message, or the `MalformedMessage` that says how to answer it."""
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return judge_bytes(line, exc)
    if isinstance(message, types.JSONRPCNotification) and b'"id"' in line:
        data = json.loads(line)  # valid: pydantic's JSON reader is the stricter one
        if "id" in data:  # a request whose id the envelope model could not read
            return judge(data)
    return SessionMessage(message)


_ID = rb'(?P<id>"(?:[^"\\]|\\.){0,200}"|-?\d{1,19})'
# A request's own id sits first (`{"jsonrpc":"2.0","id":1,"method":...`, as Python clients write it) or last
# (`...,"jsonrpc":"2.0","id":1}`, as TypeScript clients do); an "id" nested in the params is at neither end.
_HEAD_ID = re.compile(rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID + rb'\s*,\s*"method"')
_TAIL_ID = re.compile(rb'"id"\s*:\s*' + _ID + rb"\s*\}\s*$")


def judge_oversized(head: bytes, tail: bytes, limit: int) -> MalformedMessage:
    """A line over `limit` was dropped unparsed: its request is answered (-32600) if its ends name its id."""
    found = _HEAD_ID.match(head) or _TAIL_ID.search(tail)
    reason = f"a message over max_message_bytes ({limit} bytes) was dropped unread"
    if found is None:
        return MalformedMessage(reason, None)
    return _refuse(types.INVALID_REQUEST, f"Invalid request: {reason}", json.loads(found.group("id")))


def judge_bytes(body: bytes, error: ValidationError | None = None) -> MalformedMessage:
    """What to answer a body that failed validation (re-decoded: only failures pay for this)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        return _refuse(types.PARSE_ERROR, f"Parse error: {exc}")
    return judge(data, _detail(error) if error is not None else "")


def judge_error(error: ValidationError) -> MalformedMessage:
    """The SDK's own stdio transport hands on only the validation error: judge what it still shows."""
    details = error.errors()
    if any(d["type"] == "json_invalid" for d in details):
        return _refuse(types.PARSE_ERROR, f"Parse error: {details[0]['msg']}")
    # The message itself is the input of an error about its type or about one of its missing fields.
    tops = [d["input"] for d in details if len(d["loc"]) <= 1 or (d["type"] == "missing" and len(d["loc"]) == 2)]
    if not tops:
        return MalformedMessage("an invalid message was dropped", None)
    return judge(tops[0], _detail(error))


def _detail(error: ValidationError) -> str:
    """The first two problems of the request's own shape, by field (`params.name: Field required`)."""
    details = [d for d in error.errors() if d["loc"][:1] == ("JSONRPCRequest",)] or error.errors()
    return "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in details[:2])


def describe(item: Any) -> MalformedMessage | None:
    """The refusal an item handed on by a transport stands for, or None if it is not about a malformed message."""
    if isinstance(item, MalformedMessage):
        return item
    if isinstance(item, ValidationError):
        return judge_error(item)
    return None


class AnswerMalformedHTTP:
    """ASGI wrapper of the MCP endpoint: the SDK answers a body that is not a valid message with 400 and -32602
    (and lets a request whose id it cannot read pass as a notification, 202); both get the spec's answer instead.

    Requests it leaves alone pay one list append per body chunk and one comparison per response message.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        held: list[Any] = []

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def judging_send(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 202):
                held.append(message)  # decided with the body that follows
                return
            if held and message["type"] == "http.response.body":
                start = held.pop()
                answer = _http_answer(start["status"], b"".join(chunks), message.get("body", b""))
                if answer is not None:
                    await _send_json(send, start, answer)
                    return
                await send(start)
            await send(message)

        await self.app(scope, recording_receive, judging_send)


def _http_answer(status: int, request: bytes, response: bytes) -> types.JSONRPCError | None:
    """Our answer in place of the SDK's `status` response to `request`, or None to keep the SDK's."""
    if status == 202:  # accepted as a notification: unless it carried an id the envelope model could not read
        if b'"id"' not in request or b'"method"' not in request:
            return None
        try:
            data = json.loads(request)
        except ValueError:
            return None
        if not isinstance(data, Mapping) or "id" not in data or usable_id(data["id"]):
            return None
        return judge(data).answer
    if b'"code":-32602' not in response or b"Validation error" not in response:
        return None
    error: ValidationError | None = None
    try:
        types.jsonrpc_message_adapter.validate_json(request, by_name=False)
    except ValidationError as exc:
        error = exc
    refusal = judge_bytes(request, error)
    return refusal.answer or _refuse(types.INVALID_REQUEST, f"Invalid request: {refusal.reason}").answer


async def _send_json(send: Any, start: Any, answer: types.JSONRPCError) -> None:
    body = answer.model_dump_json(by_alias=True, exclude_unset=True).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
