#!/usr/bin/env bash
# Install redis-server for the scale-out tests, WITHOUT installing or starting any service.
#
# Debian's `redis-server` and `redis-tools` packages (redis-server is a link to a binary of redis-tools) and the
# libraries they need beyond a base system (libjemalloc2, liblzf1, libatomic1) are downloaded with
# `apt-get download` and unpacked with `dpkg -x` into a folder inside the repo; nothing is installed
# system-wide, no systemd unit is enabled, no user is created. `bin/redis-server` is a wrapper that finds those
# libraries; the tests start it themselves on a free 127.0.0.1 port, without persistence.
#
# Usage:  bash .ci/install-redis.sh [DEST]     (DEST defaults to <repo>/.cache/redis)
# Then:   export CIRCUITBOX_REDIS_SERVER=<DEST>/bin/redis-server   (the tests also look in <repo>/.cache/redis/bin)
# Idempotent: a second run with a working binary in place does nothing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.cache/redis}"
bin="$dest/bin"

if [[ -x "$bin/redis-server" ]] && "$bin/redis-server" --version >/dev/null 2>&1; then
    echo "redis-server already installed in $bin" >&2
    echo "$bin"
    exit 0
fi

source "$repo_root/.ci/apt-download.sh"
apt_prepare
apt_fetch redis-server redis-tools libjemalloc2 liblzf1 libatomic1

mkdir -p "$dest"
rm -rf "$dest/unpacked"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$dest/unpacked"
done
mkdir -p "$bin"
# A wrapper rather than a link: the unpacked libraries are not on the loader's path.
cat >"$bin/redis-server" <<'WRAPPER'
#!/bin/sh
here="$(cd "$(dirname "$0")/.." && pwd)/unpacked"
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu:$here/usr/lib:$here/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    exec "$here/usr/bin/redis-server" "$@"
WRAPPER
chmod +x "$bin/redis-server"

"$bin/redis-server" --version >&2
echo "installed redis-server into $bin" >&2
echo "$bin"
