#!/usr/bin/env bash
# Installs, from Debian's packages, what the demo and the tests need, when something is missing
# (a fresh Debian 12 machine has Rust, gcc, Python, git and the docker CLI). Needs root.
# mmdebstrap builds the Debian 13 root the machines also boot (tests/machine/machine.sh os-root).
#   bash scripts/install-deps.sh
set -euo pipefail
packages=(docker.io systemd-container dbus curl openssl busybox-static iproute2 util-linux procps
    ca-certificates rpm binutils strace python3-docker mmdebstrap)
# The packages' linters and the man page checks (tests/packages.rs, tests/manual.rs).
packages+=(lintian rpmlint man-db groff-base)
# The ACME test server (tests/acme.rs).
packages+=(pebble)
tools=(dockerd systemd-nspawn dbus-daemon curl openssl busybox ip nsenter ps rpm strip strace mmdebstrap)
tools+=(lintian rpmlint man groff pebble)
missing=0
for t in "${tools[@]}"; do
    command -v "$t" > /dev/null || [[ -x /usr/sbin/$t ]] || missing=1
done
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing=1
/usr/bin/python3 -c 'import docker' 2> /dev/null || missing=1 # docker-py: a client in tests/rollover.rs
if ((missing)); then
    [[ $(id -u) == 0 ]] || { echo "install-deps: run as root (apt-get install ${packages[*]})" >&2; exit 2; }
    echo "== installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
fi
for t in "${tools[@]}"; do
    command -v "$t" > /dev/null || [[ -x /usr/sbin/$t ]] \
        || { echo "install-deps: '$t' is still missing after installing ${packages[*]}" >&2; exit 2; }
done
