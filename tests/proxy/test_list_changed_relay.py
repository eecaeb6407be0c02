"""Relaying a list change to handshake-era clients: one stalled client delays nobody (virtual time, trio)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from circuitbox.config.load import parse_config
from circuitbox.server.catalog import Catalog
from circuitbox.server.proxy import Proxy


class Outbound:
    def __init__(self, stalled: bool, log: list[float]) -> None:
        self.stalled, self.log = stalled, log

    async def notify(self, method: str, params: Any) -> None:
        if self.stalled:
            await trio.sleep_forever()  # a client that stopped reading
        self.log.append(trio.current_time())


class Connection:
    def __init__(self, stalled: bool, log: list[float]) -> None:
        self.outbound = Outbound(stalled, log)


def test_a_stalled_client_delays_neither_the_others_nor_the_relay() -> None:
    proxy = Proxy(parse_config({"mcpServers": {"c": {"command": "unused"}}}, env={}))
    notified: list[float] = []
    clients = [Connection(stalled, notified) for stalled in (True, True, False, True)]
    for client in clients:
        proxy._connections.add(client)

    async def main() -> float:
        began = trio.current_time()
        await proxy._relay_changes(Catalog(), proxy.catalog, own_tools_changed=True)
        return trio.current_time() - began

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert notified == [0.0]  # the reading client heard of it at once
    assert took == 1.0  # the three stalled ones were given up on together, after their one-second bound
