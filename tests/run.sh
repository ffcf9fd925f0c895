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
# .rpm; binutils: strip for the packages; strace: kills at every write boundary; lintian,
# rpmlint: the packages' linters; man-db, groff-base: the man page checks; mmdebstrap: the
# Debian 13 root the machines boot too; pebble: the ACME test server.
bash scripts/install-deps.sh

# Each part's time, printed at the end (also when a part fails).
part_name="" part_start=$SECONDS
part_times=()
part() {
    [[ -z $part_name ]] || part_times+=("$((SECONDS - part_start))s  $part_name")
    part_name=$1 part_start=$SECONDS
    echo "== $1"
}
report_times() {
    local rc=$?
    [[ -z $part_name ]] || part_times+=("$((SECONDS - part_start))s  $part_name")
    echo "== time of each part (total ${SECONDS}s)"
    printf '   %s\n' "${part_times[@]}"
    return $rc
}
trap report_times EXIT
# Each test powers off its own machines; `bash tests/machine/machine.sh down-all` clears
# leftovers of an interrupted run.

part "cargo deny: licenses, sources, bans (the advisory database is on GitHub, out of reach here)"
command -v cargo-deny > /dev/null || cargo install --locked cargo-deny
cargo deny check licenses sources bans

part "cargo fmt --check, cargo clippy (warnings are errors)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

part "harness self-test: systemd + dockerd machine (Debian 12, this host's tree)"
bash tests/machine/selftest.sh dtm-selftest-$$

part "the Debian 13 root: its cache on a bad day (mirror out of reach, a build cut short)"
bash tests/machine/os-root-selftest.sh
part "the Debian 13 root (cached in /var/cache/dtm; rebuilt when missing, incomplete or older than the archive)"
bash tests/machine/machine.sh os-root trixie --refresh
part "harness self-test: systemd + dockerd machine (Debian 13)"
DTM_MACHINE_OS=trixie bash tests/machine/selftest.sh dtm-selftest13-$$

part "packages: a higher-versioned .deb for the upgrade test, then the .deb and .rpm"
# (in this order: cargo-deb empties target/debian when it builds)
rm -rf target/debian-upgrade && mkdir -p target/debian-upgrade
version=$(grep -m1 '^version = ' Cargo.toml | cut -d'"' -f2)
bash packaging/build.sh --deb-version "$version+upgrade1" --out target/debian-upgrade/
bash packaging/build.sh

part "unit, integration and real systemd + dockerd tests (machines: Debian 12, systemd 252, dockerd 20.10)"
# One test at a time: two cores, and the rotation tests count failed requests and stalls.
cargo test --locked --all-targets -- --test-threads=1

part "the real systemd + dockerd tests again (machines: Debian 13, systemd 257, dockerd 26.1.5)"
# (The ACME and fleet suites run on Debian 12 only: what they prove is ours, not dockerd's.)
DTM_MACHINE_OS=trixie cargo test --locked --test systemd_docker --test promises --test service \
    --test faults --test crash --test packages --test authz --test rollover -- --test-threads=1
