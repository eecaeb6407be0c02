#!/usr/bin/env bash
# Install promtool and prometheus for the observability tests, WITHOUT starting any service.
#
# Debian's `prometheus` package (which also ships promtool) is downloaded with `apt-get download` and unpacked
# with `dpkg -x` into a folder inside the repo; nothing is installed system-wide, no systemd unit is enabled,
# no user is created. The binaries are static Go executables, so no shared libraries are needed.
#
# Usage:  bash .ci/install-prometheus.sh [DEST]     (DEST defaults to <repo>/.cache/prometheus)
# Then:   export CIRCUITBOX_PROMETHEUS_DIR=<DEST>/bin   (the tests also look in <repo>/.cache/prometheus/bin)
# Idempotent: a second run with working binaries in place does nothing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.cache/prometheus}"
bin="$dest/bin"

if [[ -x "$bin/prometheus" && -x "$bin/promtool" ]] && "$bin/promtool" --version >/dev/null 2>&1; then
    echo "prometheus already installed in $bin" >&2
    echo "$bin"
    exit 0
fi

# Already on PATH (e.g. a developer's own install)? Link those instead of downloading.
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    mkdir -p "$bin"
    ln -sf "$(command -v prometheus)" "$bin/prometheus"
    ln -sf "$(command -v promtool)" "$bin/promtool"
    echo "linked prometheus from PATH into $bin" >&2
    echo "$bin"
    exit 0
fi

source "$repo_root/.ci/apt-download.sh"
apt_prepare
apt_fetch prometheus
deb="$(ls "$work"/prometheus_*.deb)"

mkdir -p "$dest"
rm -rf "$dest/unpacked"
dpkg -x "$deb" "$dest/unpacked"
mkdir -p "$bin"
ln -sf ../unpacked/usr/bin/prometheus "$bin/prometheus"  # relative: survives moving the folder
ln -sf ../unpacked/usr/bin/promtool "$bin/promtool"

"$bin/promtool" --version >&2
echo "installed prometheus into $bin" >&2
echo "$bin"
