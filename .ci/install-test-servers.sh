#!/usr/bin/env bash
# Installs the third-party MCP servers the proxy tests run as real downstreams, inside the repo (.cache/node):
# npm's @modelcontextprotocol/server-everything. PyPI's mcp-server-time, -fetch and -git come with the `test` extra.
# Idempotent; prints nothing to stdout but the install folder.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/.cache/node"
entry="$dest/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [[ ! -f "$entry" ]]; then
    mkdir -p "$dest"
    npm install --prefix "$dest" --no-audit --no-fund --loglevel=error @modelcontextprotocol/server-everything@2026.8.31 >&2
fi
echo "$dest"
