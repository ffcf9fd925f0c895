#!/usr/bin/env bash
# Self-test of `machine.sh os-root` on a bad day, in a scratch cache (the real one is left
# alone): the Debian mirror out of reach (an http proxy that refuses, as apt and curl honour
# it), a build cut short with /proc still mounted inside it, a current root that lost its
# stamp. Needs root; builds nothing for real.
#   bash tests/machine/os-root-selftest.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MACHINE="$HERE/machine.sh"
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - os-root: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - os-root: $1${2:+: $2}" >&2; }
check() {
    local desc=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$desc"; else fail "$desc" "$(echo "$out" | tail -n 5)"; fi
}

CACHE=$(mktemp -d /var/tmp/dtm-os-selftest.XXXXXX)
cleanup() {
    umount "$CACHE/trixie/root-20000101T000000/proc" 2>/dev/null || true
    rm -rf --one-file-system "$CACHE"
}
trap cleanup EXIT
export DTM_OS_CACHE=$CACHE
# Nothing listens on port 9 (discard) on loopback: every download fails at once.
offline() { http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 bash "$MACHINE" "$@"; }

# 1. No root yet, mirror out of reach: a clear failure, nothing half-built left behind.
rc=0
out=$(offline os-root trixie 2>&1) || rc=$?
check "no mirror, no cache: fails (rc $rc)" test "$rc" != 0
check "... saying why and where the log is" \
    bash -c "grep -q 'is the Debian mirror reachable' <<<'$out' && grep -q '$CACHE/trixie/build.log' <<<'$out'"
check "... leaving no root and no 'current'" \
    bash -c "! compgen -G '$CACHE/trixie/root-*' >/dev/null && test ! -e '$CACHE/trixie/current'"

# 2. A build cut short (no stamp, /proc still mounted inside it, as an interrupted mmdebstrap
# leaves it) is unmounted and removed by the next build, without touching the host's /proc.
half=$CACHE/trixie/root-20000101T000000
mkdir -p "$half/proc" "$half/usr/sbin"
mount -t proc proc "$half/proc"
offline os-root trixie >/dev/null 2>&1 || true
check "an interrupted build is unmounted and removed" \
    bash -c "! mountpoint -q '$half/proc' 2>/dev/null && test ! -e '$half'"
check "the host's /proc is intact" test -r /proc/self/status

# 3. A complete root, mirror out of reach: --refresh keeps it, with a warning.
root=$CACHE/trixie/root-20000102T000000
mkdir -p "$root/usr/sbin" "$root/usr/lib/systemd" "$root/etc/apt"
printf '#!/bin/sh\n' >"$root/usr/sbin/dockerd"
printf '#!/bin/sh\n' >"$root/usr/lib/systemd/systemd"
chmod +x "$root/usr/sbin/dockerd" "$root/usr/lib/systemd/systemd"
echo "deb http://mirror.invalid/debian trixie main" >"$root/etc/apt/sources.list"
packages=$(sed -n 's/^OS_PACKAGES=//p' "$MACHINE")
printf 'packages: %s\nbuilt: %s\n' "$packages" "$(date +%s)" >"$root.stamp"
ln -sfn root-20000102T000000 "$CACHE/trixie/current"
out=$(offline os-root trixie --refresh 2>&1) || true
check "--refresh without the mirror keeps the cached root" bash -c "grep -qx '$root' <<<'$out'"
check "... and says so" bash -c "grep -q 'cannot reach the Debian mirror' <<<'$out'"

# 4. The current root lost its stamp (or its package list changed): not used, rebuilt.
mv "$root.stamp" "$root.stamp.gone"
rc=0
offline os-root trixie >/dev/null 2>&1 || rc=$?
check "a root without its stamp is not booted (rebuild tried, rc $rc)" test "$rc" != 0
mv "$root.stamp.gone" "$root.stamp"
sed -i 's/^packages: .*/packages: systemd/' "$root.stamp"
rc=0
offline os-root trixie >/dev/null 2>&1 || rc=$?
check "a root built from another package list is not booted (rc $rc)" test "$rc" != 0

# 5. An OS the harness does not know: said so, nothing built.
rc=0
out=$(DTM_MACHINE_OS=buster bash "$MACHINE" up dtm-os-selftest-$$ 2>&1) || rc=$?
check "an unknown DTM_MACHINE_OS is refused (rc $rc)" \
    bash -c "[[ $rc != 0 ]] && grep -q \"unknown OS 'buster'\" <<<\"\$1\"" _ "$out"
bash "$MACHINE" down dtm-os-selftest-$$ >/dev/null 2>&1 || true

echo "$passed passed, $failed failed"
((failed == 0))
