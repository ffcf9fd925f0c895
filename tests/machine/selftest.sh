#!/usr/bin/env bash
# Self-test of tests/machine/machine.sh: boots a machine, checks systemd, D-Bus, dockerd and
# containers inside it, powers it off and checks that nothing is left on the host.
#   bash tests/machine/selftest.sh [NAME]      (default NAME: dtm-selftest)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MACHINE="$HERE/machine.sh"
NAME=${1:-dtm-selftest}
BASE=${DTM_MACHINES_DIR:-/var/tmp/dtm-machines}
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok   - $NAME: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $NAME: $1${2:+: $2}" >&2; }
# check DESC CMD...: CMD must exit 0
check() {
    local desc=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$desc"; else fail "$desc" "$(echo "$out" | tail -n 5)"; fi
}
m() { bash "$MACHINE" "$@"; }
in_m() { bash "$MACHINE" exec "$NAME" "$@"; }

# shellcheck disable=SC2329 # used by the trap
cleanup() { bash "$MACHINE" down "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

finish() {
    echo "$passed passed, $failed failed"
    if ((failed)); then exit 1; fi
    exit 0
}

t0=$(date +%s.%N)
if out=$(m up "$NAME" 2>&1); then
    ok "up ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s): $(echo "$out" | tail -n 1)"
else
    fail "up" "$(echo "$out" | tail -n 30)"
    finish
fi

leader=$(m leader "$NAME")
root=$(m root "$NAME")

check "leader $leader is systemd in its own mount namespace" \
    bash -c "[[ \$(cat /proc/$leader/comm) == systemd && \$(readlink /proc/$leader/ns/mnt) != \$(readlink /proc/self/ns/mnt) ]]"

state=$(in_m systemctl is-system-running 2>/dev/null || true)
check "system state is running/degraded (got '$state')" bash -c "[[ '$state' == running || '$state' == degraded ]]"

act=$(in_m systemctl is-active docker 2>/dev/null || true)
check "systemctl is-active docker = active (got '$act')" test "$act" = active

mainpid=$(in_m systemctl show -p MainPID --value docker 2>/dev/null || true)
dpid=$(in_m pidof dockerd 2>/dev/null || true)
check "docker MainPID=$mainpid is dockerd ($dpid)" bash -c "[[ '$mainpid' =~ ^[1-9][0-9]*\$ && ' $dpid ' == *' $mainpid '* ]]"

bus=$(in_m busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager GetUnit s docker.service 2>&1 || true)
check "busctl GetUnit docker.service on the system bus (got '$bus')" \
    test "$bus" = 'o "/org/freedesktop/systemd1/unit/docker_2eservice"'

check "docker info via the unix socket" in_m docker -H unix:///run/docker.sock info
check "image dtm-busybox exists" in_m docker image inspect dtm-busybox

cname=selftest-$$
if cid=$(in_m docker run -d --network none --name "$cname" dtm-busybox /bin/sleep 1000 2>&1); then
    ok "docker run -d dtm-busybox (${cid:0:12})"
    p1=$(in_m docker inspect -f '{{.State.Pid}}' "$cname" 2>/dev/null || true)
    sleep 1
    p2=$(in_m docker inspect -f '{{.State.Pid}} {{.State.Running}}' "$cname" 2>/dev/null || true)
    check "container keeps its PID ($p1 -> $p2)" bash -c "[[ '$p1' =~ ^[1-9][0-9]*\$ && '$p2' == '$p1 true' ]]"
    comm=$(in_m cat "/proc/$p1/comm" 2>/dev/null || true)
    check "container process $p1 is sleep inside the machine (got '$comm')" test "$comm" = sleep
    outp=$(in_m docker exec "$cname" /bin/sh -c 'echo in-container' 2>&1 || true)
    check "docker exec works (got '$outp')" test "$outp" = in-container
    check "docker rm -f" in_m docker rm -f "$cname"
else
    fail "docker run -d dtm-busybox" "$cid"
fi

# exec: exit code, stdin, working directory
rc=0
in_m sh -c 'exit 3' || rc=$?
check "exec propagates exit code 3 (got $rc)" test "$rc" = 3
got=$(echo piped | in_m cat)
check "exec passes stdin through (got '$got')" test "$got" = piped

# network: private, loopback up; a host binary in the machine's network namespace
check "loopback 127.0.0.1 up inside" bash -c "bash '$MACHINE' exec '$NAME' ip -o -4 addr show dev lo | grep -q 'inet 127.0.0.1/'"
links=$(nsenter -t "$leader" -n ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | tr '\n' ' ')
check "private network namespace (links: $links)" bash -c "[[ '$links' != *eth* && '$links' != *ens* && '$links' == *lo* ]]"

# files copied into the root are visible inside
mkdir -p "$root/opt/dtm-selftest"
cp /bin/true "$root/opt/dtm-selftest/true"
check "a binary copied into \$(machine.sh root) runs inside" in_m /opt/dtm-selftest/true
check "the copy did not reach the host" test ! -e /opt/dtm-selftest/true

# powerfail + boot: the same upper dir, nothing run by hand, Docker back
in_m sh -c 'echo before-the-crash > /etc/dtm-selftest-marker'
old_nspawn=$(cat "$BASE/$NAME/nspawn.pid")
check "powerfail" m powerfail "$NAME"
check "systemd-nspawn $old_nspawn is gone after powerfail" bash -c "! kill -0 $old_nspawn 2>/dev/null"
check "root unmounted, upper dir kept" bash -c "! mountpoint -q '$BASE/$NAME/root' && test -e '$BASE/$NAME/up/etc/dtm-selftest-marker'"
check "exec on a powered-off machine fails" bash -c "! bash '$MACHINE' exec '$NAME' true 2>/dev/null"
t0=$(date +%s.%N)
if out=$(m boot "$NAME" 2>&1); then
    ok "boot ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s): $(echo "$out" | tail -n 1)"
else
    fail "boot" "$(echo "$out" | tail -n 30)"
fi
got=$(in_m cat /etc/dtm-selftest-marker 2>&1 || true)
check "a file written before the power loss is there (got '$got')" test "$got" = before-the-crash
act=$(in_m systemctl is-active docker 2>/dev/null || true)
check "docker active after boot (got '$act')" test "$act" = active
check "image dtm-busybox survived" in_m docker image inspect dtm-busybox

# down: nothing left on the host
nspawn=$(cat "$BASE/$NAME/nspawn.pid")
check "down" m down "$NAME"
check "systemd-nspawn $nspawn is gone" bash -c "! kill -0 $nspawn 2>/dev/null"
check "no mounts left under $BASE/$NAME" bash -c "! findmnt -rn -o TARGET | grep -qF '$BASE/$NAME/'"
check "machine dir removed" test ! -e "$BASE/$NAME"
check "down again is a no-op" m down "$NAME"
check "exec on a down machine fails" bash -c "! bash '$MACHINE' exec '$NAME' true 2>/dev/null"

finish
