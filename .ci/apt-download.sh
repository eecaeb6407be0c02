# Sourced by the install scripts that take a Debian package without installing it: `apt_prepare` makes `$work`
# (a temporary folder, removed at exit, writable by apt's _apt user, which `apt-get download` writes as) and
# refreshes the package lists; `apt_fetch PKG...` downloads the packages into it. Nothing is installed or started:
# each script unpacks what it fetched with `dpkg -x` into a folder of its own.

apt_prepare() {
    local sudo=""
    if [[ "$(id -u)" != "0" ]]; then
        sudo="sudo"
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    $sudo apt-get update -qq >&2
    chmod 0777 "$work"
}

apt_fetch() {
    (cd "$work" && apt-get download -qq "$@" >&2)
}
