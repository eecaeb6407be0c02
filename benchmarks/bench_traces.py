"""What traces cost per call: circuitbox with OpenTelemetry unconfigured vs configured with an in-memory exporter.

    python benchmarks/bench_traces.py            # 150 blocks of 20 calls each way
    python benchmarks/bench_traces.py --quick    # 15 blocks

circuitbox runs in this process (so an in-memory exporter can take its spans) in front of the bundled chaos server
over stdio; an SDK client calls an echo tool over in-memory streams. The contenders alternate block by block on the
same proxy and downstream: "off" is OpenTelemetry's no-op tracer (what a user without the `OTEL_*` variables gets),
"on" a real SDK tracer provider with a batch processor feeding an in-memory exporter (what the `otel` extra does,
minus the network). Measured: this process's CPU time per call (wall time on a shared machine is mostly other
processes' noise; the span work is CPU). The client's own span is not recorded: the agent is not circuitbox.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from circuitbox.config.load import load_config
from circuitbox.observability import traces
from circuitbox.server.app import build_proxy

CLIENT_SPAN = "MCP send tools/call d__echo"  # the benchmark's own client (the agent), not circuitbox: never recorded


class SwitchTracer(trace.Tracer):
    """The MCP SDK takes its tracer from the global provider once; this one lets each round choose."""

    def __init__(self, switch: Switch, name: str) -> None:
        self.switch = switch
        self.sdk = switch.sdk.get_tracer(name)
        self.off = trace.NoOpTracer()

    def _for(self, name: str) -> trace.Tracer:
        return self.sdk if self.switch.on and name != CLIENT_SPAN else self.off

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        return self._for(name).start_span(name, *args, **kwargs)

    @contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        with self._for(name).start_as_current_span(name, *args, **kwargs) as span:
            yield span


class Switch(trace.TracerProvider):
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.sdk = TracerProvider()
        self.sdk.add_span_processor(BatchSpanProcessor(self.exporter))
        self.on = False

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> trace.Tracer:
        return SwitchTracer(self, instrumenting_module_name)

    def set(self, on: bool) -> None:
        self.on = on
        if on:
            traces.enable(self.sdk)
        else:
            traces.disable()


BLOCK = 20  # calls per block; blocks alternate between the contenders


async def paired(session: ClientSession, switch: Switch, blocks: int, first_on: bool) -> dict[bool, list[float]]:
    """CPU seconds this process spends per call (client, proxy and exporter thread alike; the downstream is another
    process), block by block, the contenders alternating: CPU time is what tracing costs, and unlike wall time it
    hardly moves when other processes load the machine."""
    spent: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * blocks):
        on = (i % 2 == 0) == first_on
        switch.set(on)
        began = time.process_time()
        for n in range(BLOCK):
            params = types.CallToolRequestParams(name="d__echo", arguments={"message": f"m{n}"})
            await session.send_request(types.CallToolRequest(params=params), types.CallToolResult)
        if on:
            switch.sdk.force_flush()  # the exporter's work for this block counts in this block
        spent[on].append((time.process_time() - began) / BLOCK)
    return spent


async def run(rounds: int, blocks: int) -> dict[str, list[float]]:
    switch = Switch()
    trace.set_tracer_provider(switch)
    downstream = {"command": sys.executable, "args": ["-m", "circuitbox", "chaos", "--tool", "echo=healthy"]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuitbox.json"
        path.write_text(json.dumps({"environment": "production", "mcpServers": {"d": downstream}}))
        proxy, _ = build_proxy(load_config(path))
    results: dict[str, list[float]] = {"off": [], "on": []}
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        server = proxy.build_server()
        async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
            tg.start_soon(server.run, s_read, s_write, proxy.initialization_options(server))
            async with ClientSession(c_read, c_write) as session:
                await session.initialize()
                await proxy.wait_first_attempts()
                await paired(session, switch, 2, True)  # warm-up
                for r in range(rounds):
                    spent = await paired(session, switch, blocks, r % 2 == 0)
                    results["off"] += spent[False]
                    results["on"] += spent[True]
                    switch.exporter.clear()
        tg.cancel_scope.cancel()
    return results


def table(results: dict[str, list[float]]) -> str:
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    return "\n".join(
        [
            f"{'contender':<34}{'CPU per call (median of blocks)':>34}",
            f"{'traces off (no OTEL_* variables)':<34}{off * 1e6:>31.0f} us",
            f"{'traces on (in-memory exporter)':<34}{on * 1e6:>31.0f} us",
            f"added per call: {(on - off) * 1e6:.1f} us ({on / off:.3f}x); "
            f"{len(results['on'])} blocks of {BLOCK} calls each way",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, blocks = (3, 5) if args.quick else (10, 15)
    print(table(anyio.run(run, rounds, blocks)))


if __name__ == "__main__":
    main()
