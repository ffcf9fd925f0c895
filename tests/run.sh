#!/usr/bin/env bash
# The one test command: unit tests, integration tests through the binary (openssl, curl, the
# docker CLI), and the tests against a real systemd, D-Bus and dockerd in throwaway
# systemd-nspawn machines. Needs root and the packages .ci/run installs.
#   bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "tests/run.sh: run as root (the systemd machines need it)" >&2; exit 2; }
# What the tests need, from Debian's packages (as on a fresh Debian 12 machine): installed when
# missing. docker.io: dockerd for the throwaway machines; systemd-container: systemd-nspawn;
# busybox-static: the container image; openssl, curl: independent checks; rpm: inspecting the
# .rpm; binutils: strip for the packages; strace: kills at every write boundary; mmdebstrap:
# the Debian 13 root the machines boot too.
bash scripts/install-deps.sh
# Each test powers off its own machines; `bash tests/machine/machine.sh down-all` clears
# leftovers of an interrupted run.

echo "== cargo deny: licenses, sources, bans (the advisory database is on GitHub, out of reach here)"
command -v cargo-deny > /dev/null || cargo install --locked cargo-deny
cargo deny check licenses sources bans

echo "== cargo fmt --check, cargo clippy (warnings are errors)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

echo "== harness self-test: systemd + dockerd machine (Debian 12, this host's tree)"
bash tests/machine/selftest.sh dtm-selftest-$$

echo "== the Debian 13 root: its cache on a bad day (mirror out of reach, a build cut short)"
bash tests/machine/os-root-selftest.sh
echo "== the Debian 13 root (cached in /var/cache/dtm; rebuilt when missing, incomplete or older than the archive)"
bash tests/machine/machine.sh os-root trixie --refresh
echo "== harness self-test: systemd + dockerd machine (Debian 13)"
DTM_MACHINE_OS=trixie bash tests/machine/selftest.sh dtm-selftest13-$$

echo "== packages: a higher-versioned .deb for the upgrade test, then the .deb and .rpm"
# (in this order: cargo-deb empties target/debian when it builds)
rm -rf target/debian-upgrade && mkdir -p target/debian-upgrade
version=$(grep -m1 '^version = ' Cargo.toml | cut -d'"' -f2)
bash packaging/build.sh --deb-version "$version+upgrade1" --out target/debian-upgrade/
bash packaging/build.sh

echo "== unit, integration and real systemd + dockerd tests"
# One test at a time: two cores, and the rotation tests count failed requests and stalls.
cargo test --locked --all-targets -- --test-threads=1
