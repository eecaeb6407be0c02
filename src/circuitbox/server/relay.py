"""Per-client state and the server-to-client notifications the proxy relays.

Each handshake-era upstream connection has its own log level and resource subscriptions. A downstream's
`notifications/message` reaches each client whose level admits it (the logger prefixed with the downstream's
namespace), and `notifications/resources/updated` reaches only the clients subscribed to that URI. The level sent to a
downstream is the most verbose any live client asked for, so no client's wish is lost to another's.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

logger = logging.getLogger("circuitbox.relay")

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass
class ClientState:
    """What one upstream client asked for; never shared with another client."""

    level: str | None = None
    subscriptions: set[str] = field(default_factory=set)


class Clients:
    """The live handshake-era upstream connections and their state (weakly held: a closed session goes away)."""

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[Any, ClientState] = weakref.WeakKeyDictionary()

    def add(self, connection: Any) -> ClientState:
        state = self._states.get(connection)
        if state is None:
            state = self._states[connection] = ClientState()
        return state

    def connections(self) -> list[Any]:
        return list(self._states.keys())

    def count(self) -> int:
        """How many clients there are (the stdio lane asks on every call: no list of them)."""
        return len(self._states)

    def most_verbose_level(self) -> str | None:
        levels = [s.level for s in self._states.values() if s.level is not None]
        return min(levels, key=LEVELS.index) if levels else None

    def subscribed(self, uri: str) -> bool:
        return any(uri in s.subscriptions for s in self._states.values())

    async def relay_log(
        self, namespace: str, params: dict[str, Any], skip: Callable[[Any], bool] = lambda _: False
    ) -> None:
        """A downstream's log message, to every client whose level admits it, its logger prefixed; not to those
        `skip` names (clients with a connection of their own to that server hear only that one)."""
        level = params.get("level")
        rank = LEVELS.index(level) if level in LEVELS else len(LEVELS)
        message = prefixed(namespace, params)
        for connection, state in list(self._states.items()):
            if skip(connection):
                continue
            if state.level is None or rank >= LEVELS.index(state.level):
                await send_to_client(connection, "notifications/message", message)

    async def relay_updated(self, params: dict[str, Any]) -> None:
        """A resource changed: only the clients that subscribed to it hear of it."""
        uri = params.get("uri")
        for connection, state in list(self._states.items()):
            if uri in state.subscriptions:
                await send_to_client(connection, "notifications/resources/updated", params)


def prefixed(namespace: str, params: dict[str, Any]) -> dict[str, Any]:
    """A downstream's log message as its clients get it: the logger prefixed with the server's namespace."""
    if not namespace:
        return dict(params)
    source = params.get("logger")
    return {**params, "logger": f"{namespace}__{source}" if source else namespace}


async def send_to_client(connection: Any, method: str, params: dict[str, Any] | None) -> None:
    try:
        # Bounded: a client that stopped reading must not stall the downstream owner relaying this.
        with anyio.move_on_after(1):
            await connection.outbound.notify(method, params)
    except Exception as exc:
        logger.debug("could not relay %s to a client: %s", method, exc)
