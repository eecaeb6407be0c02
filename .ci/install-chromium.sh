#!/usr/bin/env bash
# Install Debian's headless-capable chromium and chromium-driver for the status page's browser tests, WITHOUT
# installing anything system-wide or starting any service.
#
# `apt-get install --simulate --no-install-recommends` names exactly the packages this machine lacks for the two
# (their dependency closure minus what is already installed); each is fetched with `apt-get download` and unpacked
# with `dpkg -x` into one root folder inside the repo. No maintainer script runs, no unit is enabled. The browser
# then runs from that root with LD_LIBRARY_PATH pointing at its libraries: bin/chromium and bin/chromedriver are
# small wrappers that set it.
#
# Usage:  bash .ci/install-chromium.sh [DEST]     (DEST defaults to <repo>/.cache/chromium)
# Then:   the tests find <DEST>/bin/chromium and <DEST>/bin/chromedriver (or $CIRCUITBOX_CHROMIUM_DIR/bin).
# Idempotent: a second run with a working browser in place does nothing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.cache/chromium}"
bin="$dest/bin"

if [[ -x "$bin/chromium" && -x "$bin/chromedriver" ]] && "$bin/chromedriver" --version >/dev/null 2>&1 \
    && "$bin/chromium" --headless --no-sandbox --version >/dev/null 2>&1; then
    echo "chromium already installed in $bin" >&2
    echo "$bin"
    exit 0
fi

source "$repo_root/.ci/apt-download.sh"
apt_prepare
missing="$(apt-get install --simulate --no-install-recommends chromium chromium-driver 2>/dev/null \
    | awk '/^Inst /{print $2}')"
if ! grep -qx chromium <<<"$missing"; then
    missing="$missing"$'\n'"chromium"$'\n'"chromium-common"$'\n'"chromium-driver"  # installed system-wide already
fi
# shellcheck disable=SC2086  # one package name per word
apt_fetch $missing

rm -rf "$dest/root"
mkdir -p "$dest/root" "$bin"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$dest/root"
done

libs='"$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/pulseaudio:$root/lib/x86_64-linux-gnu:$root/usr/lib/chromium${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"'
for tool in chromium chromedriver; do
    cat >"$bin/$tool" <<WRAPPER
#!/bin/sh
# Runs the unpacked $tool with its own libraries (written by .ci/install-chromium.sh).
root="\$(cd "\$(dirname "\$0")/../root" && pwd)"
export LD_LIBRARY_PATH=$libs
exec "\$root/usr/lib/chromium/$tool" "\$@"
WRAPPER
    chmod +x "$bin/$tool"
done

"$bin/chromedriver" --version >&2
"$bin/chromium" --headless --no-sandbox --version >&2
echo "installed chromium into $bin" >&2
echo "$bin"
