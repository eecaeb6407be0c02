"""Runs the SDK's conformance "everything" server (vendored in sdk_everything_server.py) over stdio or streamable HTTP.

python -m tests.conformance.everything_main stdio
python -m tests.conformance.everything_main http PORT      (127.0.0.1 only)
"""

from __future__ import annotations

import logging
import sys

from tests.conformance.sdk_everything_server import event_store, mcp


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if argv[:1] == ["stdio"]:
        mcp.run(transport="stdio")
    elif len(argv) == 2 and argv[0] == "http":
        # As the SDK's own conformance run starts it: the event store and a short retry for the SSE polling scenario.
        port = int(argv[1])
        mcp.run(transport="streamable-http", host="127.0.0.1", port=port, event_store=event_store, retry_interval=100)
    else:
        sys.exit("usage: everything_main stdio | http PORT")


if __name__ == "__main__":
    main(sys.argv[1:])
