#!/usr/bin/env bash
# Throwaway systemd + dockerd "machines" for integration tests.
#
# Each machine boots this host's own OS tree with systemd-nspawn, under an overlay whose
# upper dir is thrown away on `down`: the host's files are never written. See
# /work/shared/docs/background.md, "A real systemd + dockerd to test against".
#
#   machine.sh up NAME [--bind PATH]... [--bind-ro PATH]...
#                              boot NAME, wait for systemd + dockerd, build image dtm-busybox
#   machine.sh exec NAME CMD...   run CMD inside (stdin/stdout pass through, exit code kept)
#   machine.sh root NAME          print the host path of NAME's root (copy files in there)
#   machine.sh leader NAME        print the host PID of NAME's systemd (for nsenter -t PID -n)
#   machine.sh status NAME        exit 0 if NAME is up
#   machine.sh powerfail NAME     pull the plug: SIGKILL nspawn and the machine's systemd (no
#                              shutdown), unmount the overlay, keep its upper dir
#   machine.sh boot NAME          boot a machine again after powerfail, on the same upper dir
#                              (no first-boot setup, no image import); wait for systemd + dockerd
#   machine.sh down NAME          power off and clean up (idempotent)
#   machine.sh down-all           down every machine under the base dir
#   machine.sh os-root OS [--refresh]
#                              print the cached root of OS (trixie), building it with mmdebstrap
#                              when missing or incomplete; --refresh: also rebuild it when the
#                              Debian archive changed since it was built (needs the mirror; a
#                              cached root is kept, with a warning, when it is out of reach)
#
# Environment: DTM_MACHINE_OS (host: boot this host's own tree, the default; trixie: boot the
# cached Debian 13 root from `os-root`), DTM_OS_CACHE (default /var/cache/dtm),
# DTM_MACHINES_DIR (default /var/tmp/dtm-machines), DTM_MACHINE_TIMEOUT
# (seconds to wait for boot, default 60), DTM_MACHINE_KEEP_FAILED=1 (leave a machine whose
# boot failed running, for a look), DTM_MACHINE_QUIET=1 (no progress lines on stderr).
#
# Files the host writes under a lower-dir path *after* boot are NOT reliably visible inside
# (overlayfs caches lookups: a replaced file can show its old content, a name looked up
# before it existed stays missing). Copy files into "$(machine.sh root NAME)/..." or pass
# --bind PATH to `up` to share a host directory live.
set -euo pipefail

BASE=${DTM_MACHINES_DIR:-/var/tmp/dtm-machines}
BOOT_TIMEOUT=${DTM_MACHINE_TIMEOUT:-60}
IMAGE=dtm-busybox
INNER_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The host may carry a newer docker CLI in /usr/local/bin; talk to the packaged one.
DOCKER=/usr/bin/docker
# Units that only slow the boot down, would act on their own later, or cannot work in a
# container (systemd-modules-load: Debian 13 fails it there); masked in the overlay.
MASK_UNITS="postgresql.service postgresql@.service e2scrub_reap.service e2scrub_all.timer
apt-daily.timer apt-daily-upgrade.timer man-db.timer dpkg-db-backup.timer
systemd-tmpfiles-clean.timer fstrim.timer logrotate.timer
systemd-modules-load.service"

# What a Debian 13 machine carries besides minbase: systemd, D-Bus and Docker (dockerd and the
# CLI are separate packages there), and what the tests run inside: ip, curl, openssl, python3
# (bench/poller.py), docker-py (a client in tests/authz.rs and tests/rollover.rs), strace
# (tests/crash.rs), procps (pgrep), busybox (nc), pebble (2.6, with ARI: run from the host by
# tests/acme.rs, Debian 12's has none). Changing this list rebuilds the cached root.
OS_CACHE=${DTM_OS_CACHE:-/var/cache/dtm}
OS_PACKAGES=systemd,systemd-sysv,dbus,docker.io,docker-cli,iproute2,curl,ca-certificates,openssl,python3,python3-docker,strace,procps,busybox-static,pebble
OS_SUPPORTED="trixie"

PROG=$(basename "$0")
die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }
log() { [[ -n ${DTM_MACHINE_QUIET:-} ]] || echo "$PROG: $*" >&2; }

usage() {
    sed -n '/^#   machine.sh/s/^#   /  /p' "$0" >&2
    exit 2
}

check_name() {
    [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$ ]] \
        || die "bad machine name '${1:-}' (letters, digits, '-', '_'; at most 41 chars)"
}

need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

mdir() { echo "$BASE/$1"; }

# cgroup directories used to keep each machine's nspawn (which makes payload/ and
# supervisor/ next to itself) apart from the other machines'.
cgroup_dirs() {
    local name=$1 t
    t=$(findmnt -n -t cgroup2 -o TARGET 2>/dev/null | head -n1 || true)
    [[ -n $t ]] && echo "$t/dtm-machine-$name"
    t=$(findmnt -n -t cgroup -o TARGET,OPTIONS 2>/dev/null | awk '$2 ~ /name=systemd/ {print $1; exit}' || true)
    [[ -n $t ]] && echo "$t/dtm-machine-$name"
    return 0
}

is_nspawn_pid() { # PID belongs to a live systemd-nspawn
    [[ -n ${1:-} && -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == systemd-nspawn ]]
}

nspawn_of() { # PID is a live systemd-nspawn booting DIR/root
    is_nspawn_pid "$1" || return 1
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$2/root"
}

nspawn_pid() { # print the nspawn PID of machine NAME if it is alive
    local d p
    d=$(mdir "$1")
    [[ -r $d/nspawn.pid ]] || return 1
    p=$(cat "$d/nspawn.pid")
    nspawn_of "$p" "$d" || return 1
    echo "$p"
}

valid_leader() { # PID NAME: PID is NAME's systemd (own mount namespace, NAME's cgroup)
    local p=${1:-} name=$2
    [[ -n $p && -r /proc/$p/comm ]] || return 1
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]] || return 1
    [[ $(readlink "/proc/$p/ns/mnt") != "$(readlink /proc/self/ns/mnt)" ]] || return 1
    if [[ -n $(cgroup_dirs "$name") ]]; then
        grep -q "/dtm-machine-$name/" "/proc/$p/cgroup" 2>/dev/null || return 1
    fi
}

find_leader() { # NAME NSPAWN_PID: print the machine's PID 1 (systemd) once it runs
    local name=$1 np=$2 p
    for p in $(pgrep -P "$np" 2>/dev/null || true); do
        valid_leader "$p" "$name" && { echo "$p"; return 0; }
    done
    # Seen once after `boot`: PID 1 running but not found as nspawn's child. Fall back to the
    # systemd that is PID 1 of its own PID namespace inside this machine's cgroup.
    [[ -n $(cgroup_dirs "$name") ]] || return 1
    for p in $(pgrep -x systemd 2>/dev/null || true); do
        valid_leader "$p" "$name" || continue
        [[ $(awk '/^NSpid:/ { print $NF }' "/proc/$p/status" 2>/dev/null) == 1 ]] && { echo "$p"; return 0; }
    done
    return 1
}

leader_pid() { # print the live leader of NAME or fail
    local d p
    d=$(mdir "$1")
    [[ -r $d/leader ]] || return 1
    p=$(cat "$d/leader")
    valid_leader "$p" "$1" || return 1
    echo "$p"
}

require_up() {
    check_name "$1"
    leader_pid "$1" >/dev/null || die "machine '$1' is not up (no live leader under $(mdir "$1"))"
}

# Run a command inside the machine (no cwd mapping; used internally).
in_machine() {
    local leader=$1
    shift
    nsenter -t "$leader" -a env -i PATH="$INNER_PATH" HOME=/root LANG=C.UTF-8 \
        TERM="${TERM:-dumb}" "$@"
}

console_tail() {
    local d
    d=$(mdir "$1")
    if [[ -r $d/console.log ]]; then
        echo "---- last lines of $d/console.log ----" >&2
        tail -n 25 "$d/console.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
        echo "----" >&2
    fi
}

lock() { # hold a per-machine lock for the rest of this process
    mkdir -p "$BASE"
    exec 9>"$BASE/.$1.lock"
    flock -w 120 9 || die "could not lock machine '$1' (another up/down running?)"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------- down

unmount_all_under() { # unmount every mount at or below DIR, deepest first
    local dir=$1 m
    local -a mounts
    for _ in 1 2 3; do
        mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | sort -r)
        ((${#mounts[@]})) || return 0
        for m in "${mounts[@]}"; do
            # findmnt escapes blanks as \x20; our paths have none.
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
    done
    mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d')
    ((${#mounts[@]} == 0)) || { warn "still mounted: ${mounts[*]}"; return 1; }
}

remove_cgroups() {
    local name=$1 cg i
    while read -r cg; do
        [[ -n $cg && -d $cg ]] || continue
        for i in $(seq 1 50); do
            find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $cg ]] || break
            # kill whatever is left (only processes of this machine live here)
            [[ -w $cg/cgroup.kill ]] && echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
            if ((i == 10)); then
                # shellcheck disable=SC2038 # the output is PIDs, not file names
                find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            fi
            sleep 0.1
        done
        [[ -d $cg ]] && warn "could not remove cgroup $cg"
    done < <(cgroup_dirs "$name")
    return 0
}

wait_gone() { # PID SECONDS
    local p=$1 n i
    n=$(awk -v s="$2" 'BEGIN { print int(s * 10) }')
    for ((i = 0; i < n; i++)); do
        kill -0 "$p" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$p" 2>/dev/null
}

do_down() {
    local name=$1 d np leader
    d=$(mdir "$name")
    [[ -d $d ]] || { remove_cgroups "$name"; return 0; }
    np=$(nspawn_pid "$name" || true)
    leader=$(leader_pid "$name" || true)
    if [[ -n $np ]]; then
        if [[ -n $leader ]]; then
            # containers would make poweroff wait for their 10 s stop timeout: kill them first
            # shellcheck disable=SC2016 # $ids expands inside the machine
            timeout 10 nsenter -t "$leader" -a sh -c \
                'ids=$('"$DOCKER"' ps -q 2>/dev/null) && [ -n "$ids" ] && '"$DOCKER"' kill $ids' \
                >/dev/null 2>&1 || true
            timeout 5 nsenter -t "$leader" -a /bin/systemctl poweroff --no-block >/dev/null 2>&1 || true
        fi
        if ! wait_gone "$np" 15; then
            warn "machine '$name' did not power off within 15 s; terminating systemd-nspawn"
            kill -TERM "$np" 2>/dev/null || true
            if ! wait_gone "$np" 5; then
                kill -KILL "$np" 2>/dev/null || true
                [[ -n $leader ]] && kill -KILL "$leader" 2>/dev/null || true
                wait_gone "$np" 5 || warn "systemd-nspawn $np still alive"
            fi
        fi
    fi
    if [[ -z $np && -n $leader ]]; then
        warn "systemd-nspawn of '$name' is gone but its systemd ($leader) is not; killing it"
        kill -KILL "$leader" 2>/dev/null || true
        wait_gone "$leader" 5 || true
    fi
    remove_cgroups "$name"
    unmount_all_under "$d" || die "could not unmount everything under $d; not removing it"
    # lower and root were mount points: remove them only with rmdir, never recursively,
    # so that a mount that is somehow still there can never be deleted through.
    local sub
    for sub in lower root; do
        [[ -e $d/$sub ]] || continue
        if mountpoint -q "$d/$sub"; then die "$d/$sub is still a mount point"; fi
        rmdir "$d/$sub" 2>/dev/null || die "$d/$sub is not empty after unmount; leaving $d alone"
    done
    rm -rf --one-file-system "$d/up" "$d/work" "$d/img"
    rm -f "$d/console.log" "$d/leader" "$d/nspawn.pid" "$d/started" "$d/binds" "$d/powerfail" "$d/os"
    rmdir "$d" 2>/dev/null || rm -rf --one-file-system "$d"
    rm -f "/run/systemd/nspawn/propagate/$name" 2>/dev/null || rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
    return 0
}

cmd_down() {
    [[ $# == 1 ]] || usage
    check_name "$1"
    need_root
    lock "$1"
    do_down "$1"
    rm -f "$BASE/.$1.lock"
    rmdir "$BASE" 2>/dev/null || true
    log "machine '$1' is down"
}

cmd_down_all() {
    [[ $# == 0 ]] || usage
    need_root
    [[ -d $BASE ]] || return 0
    local d n rc=0
    for d in "$BASE"/*/; do
        [[ -d $d ]] || continue
        n=$(basename "$d")
        [[ $n =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$ ]] || { warn "skipping $d"; continue; }
        ("$0" down "$n") || rc=1
    done
    return $rc
}

# ------------------------------------------------------------------------------------ up

build_image() {
    local name=$1 leader=$2 d img a
    d=$(mdir "$name")
    img=$d/img
    rm -rf "$img"
    mkdir -p "$img/bin" "$img/tmp" "$img/etc" "$img/proc" "$img/sys" "$img/dev"
    chmod 1777 "$img/tmp"
    [[ -x /bin/busybox ]] || die "/bin/busybox not found (apt-get install busybox-static)"
    file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' \
        || ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' \
        || die "/bin/busybox is not static (apt-get install busybox-static)"
    cp /bin/busybox "$img/bin/busybox"
    for a in $(/bin/busybox --list); do
        [[ $a == busybox || -e $img/bin/$a ]] || ln -s busybox "$img/bin/$a"
    done
    echo "root:x:0:0:root:/root:/bin/sh" >"$img/etc/passwd"
    echo "root:x:0:" >"$img/etc/group"
    tar -C "$img" --numeric-owner --owner=0 --group=0 -c . \
        | in_machine "$leader" "$DOCKER" import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null \
        || die "docker import of $IMAGE failed"
    rm -rf "$img"
}

probe_container() {
    local leader=$1 probe=dtm-probe-$$ running
    in_machine "$leader" "$DOCKER" rm -f "$probe" >/dev/null 2>&1 || true
    if ! out=$(in_machine "$leader" "$DOCKER" run -d --network none --name "$probe" "$IMAGE" /bin/sleep 1000 2>&1); then
        die "a container cannot run inside the machine: $out"
    fi
    running=$(in_machine "$leader" "$DOCKER" inspect -f '{{.State.Running}}' "$probe" 2>&1 || true)
    in_machine "$leader" "$DOCKER" rm -f "$probe" >/dev/null 2>&1 || true
    [[ $running == true ]] || die "probe container is not running (inspect said: $running)"
}

mount_overlay() { # NAME LOWER: bind LOWER (/ or an OS root) as the lower dir, overlay on root
    local d lower=$2
    d=$(mdir "$1")
    mkdir -p "$d"/{lower,up,work,root}
    mount --bind "$lower" "$d/lower" || die "mount --bind $lower $d/lower failed"
    if ! mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/up,workdir=$d/work" "$d/root"; then
        umount "$d/lower" || true
        die "overlay mount on $d/root failed"
    fi
}

check_tools() {
    local c
    for c in systemd-nspawn nsenter setsid findmnt mountpoint flock timeout tar "$DOCKER" /usr/sbin/dockerd; do
        command -v "$c" >/dev/null || die "'$c' not found (apt-get install systemd-container docker.io util-linux)"
    done
    [[ -d /run/systemd/system ]] && [[ $(cat /proc/1/comm) == systemd ]] && [[ -z ${DTM_MACHINE_ALLOW_HOST_SYSTEMD:-} ]] \
        && warn "the host runs systemd as PID 1; this harness was written for hosts without it"
    return 0
}

# launch_and_wait NAME MODE: start systemd-nspawn on the mounted overlay (with the binds saved
# in $d/binds), wait for systemd and dockerd. MODE "up" (first boot: a failure takes the machine
# down) or "boot" (a boot after `powerfail`: a failure leaves the machine as it is, running if
# systemd runs, so that a test can look at it; `down` removes it). Sets LEADER, NSPAWN, STATE, DV.
launch_and_wait() {
    local name=$1 mode=$2 d
    d=$(mdir "$name")
    # Give this machine's nspawn a cgroup of its own (it creates payload/ and supervisor/
    # beside itself: two machines in one cgroup would collide).
    local cg
    local -a cgs=()
    mapfile -t cgs < <(cgroup_dirs "$name")
    for cg in "${cgs[@]}"; do mkdir -p "$cg"; done

    local -a nspawn_args=(-D "$d/root" --register=no --keep-unit --private-network -b -M "$name"
        --capability=all "--system-call-filter=add_key keyctl request_key bpf")
    local b
    if [[ -r $d/binds ]]; then
        while IFS= read -r b; do [[ -n $b ]] && nspawn_args+=("$b"); done <"$d/binds"
    fi

    (
        cd "$d"
        for cg in "${cgs[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        # hand the machine no descriptor but 0-2 (not our lock, not a caller's pipe)
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null || true
        done
        exec setsid systemd-nspawn "${nspawn_args[@]}" </dev/null >>"$d/console.log" 2>&1
    ) &
    local np=$! i leader=""
    # In a non-interactive shell the subshell is no process-group leader, so setsid execs
    # in place and $! is nspawn itself. Fall back to a search by command line just in case.
    for ((i = 0; i < 50; i++)); do
        is_nspawn_pid "$np" && break
        if ! kill -0 "$np" 2>/dev/null || [[ $(cat "/proc/$np/comm" 2>/dev/null) == setsid ]]; then
            local p
            for p in $(pgrep -x systemd-nspawn || true); do
                nspawn_of "$p" "$d" && np=$p
            done
            is_nspawn_pid "$np" && break
        fi
        sleep 0.1
    done
    if ! is_nspawn_pid "$np"; then
        console_tail "$name"
        [[ $mode == up ]] && { do_down "$name" || true; }
        die "systemd-nspawn for '$name' did not start"
    fi
    echo "$np" >"$d/nspawn.pid"

    local deadline
    deadline=$(($(date +%s) + BOOT_TIMEOUT))
    fail_boot() {
        console_tail "$name"
        if [[ $mode == boot ]]; then
            warn "leaving '$name' as it is for a look; '$PROG down $name' removes it"
        elif [[ -n ${DTM_MACHINE_KEEP_FAILED:-} ]]; then
            warn "DTM_MACHINE_KEEP_FAILED set: leaving '$name' for a look; '$PROG down $name' removes it"
        else
            warn "taking the failed machine '$name' down (set DTM_MACHINE_KEEP_FAILED=1 to keep it)"
            do_down "$name" || true
            rm -f "$BASE/.$name.lock"
            rmdir "$BASE" 2>/dev/null || true
        fi
        die "$1"
    }
    # the machine's PID 1 is nspawn's child running systemd
    while :; do
        leader=$(find_leader "$name" "$np" || true)
        [[ -n $leader ]] && break
        kill -0 "$np" 2>/dev/null || fail_boot "systemd-nspawn exited during boot"
        if (($(date +%s) >= deadline)); then
            local c
            for c in $(pgrep -P "$np" 2>/dev/null || true); do
                warn "child $c of nspawn $np: comm '$(cat /proc/$c/comm 2>/dev/null)', cgroup '$(tr '\n' ' ' </proc/$c/cgroup 2>/dev/null)'"
            done
            fail_boot "no systemd inside after ${BOOT_TIMEOUT}s"
        fi
        sleep 0.05
    done
    echo "$leader" >"$d/leader"

    local state=""
    while :; do
        state=$(timeout 5 nsenter -t "$leader" -a /bin/systemctl is-system-running 2>/dev/null || true)
        case $state in
            running | degraded) break ;;
            maintenance | stopping | offline) fail_boot "machine '$name' is '$state'" ;;
        esac
        kill -0 "$np" 2>/dev/null || fail_boot "systemd-nspawn exited during boot"
        (($(date +%s) < deadline)) || fail_boot "machine '$name' still '$state' after ${BOOT_TIMEOUT}s"
        sleep 0.1
    done
    if [[ $state == degraded ]]; then
        warn "machine '$name' is degraded; failed units:"
        in_machine "$leader" systemctl --failed --no-legend --plain --no-pager >&2 || true
    fi

    # docker.socket is socket-activated and docker.service enabled; wait for the API.
    local dv=""
    while :; do
        if dv=$(in_machine "$leader" timeout 10 "$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null) && [[ -n $dv ]]; then
            break
        fi
        (($(date +%s) < deadline)) || {
            in_machine "$leader" systemctl status --no-pager docker.socket docker.service >&2 || true
            fail_boot "dockerd inside '$name' did not answer within ${BOOT_TIMEOUT}s"
        }
        sleep 0.1
    done
    in_machine "$leader" timeout 20 "$DOCKER" info >/dev/null 2>&1 || fail_boot "docker info fails inside '$name'"

    # loopback: up already with --private-network, but make sure
    if ! in_machine "$leader" ip -o link show lo | grep -q '[<,]UP[,>]'; then
        in_machine "$leader" ip link set lo up || fail_boot "cannot bring lo up inside '$name'"
    fi
    in_machine "$leader" ip -o -4 addr show dev lo | grep -q '127\.0\.0\.1' \
        || in_machine "$leader" ip addr add 127.0.0.1/8 dev lo || true
    LEADER=$leader NSPAWN=$np STATE=$state DV=$dv
}

cmd_up() {
    [[ $# -ge 1 ]] || usage
    local name=$1
    shift
    check_name "$name"
    need_root
    local -a binds=()
    while (($#)); do
        case $1 in
            --bind | --bind-ro)
                [[ $# -ge 2 ]] || die "$1 needs a PATH"
                [[ $2 == /* && -d $2 ]] || die "$1 $2: not an absolute path to a directory"
                binds+=("$1=$2")
                shift 2
                ;;
            *) die "up: unknown option '$1'" ;;
        esac
    done
    check_tools

    lock "$name"
    local d
    d=$(mdir "$name")
    if [[ -d $d ]]; then
        if leader_pid "$name" >/dev/null; then
            die "machine '$name' is already up (run: $PROG down $name)"
        fi
        log "removing stale machine dir $d"
        do_down "$name"
    fi
    local t0 lower=/ os=${DTM_MACHINE_OS:-host}
    t0=$(now)
    if [[ $os != host ]]; then
        mkdir -p "$d"
        lower=$(os_root "$os" "" "$d/os") || die "no $os root to boot (see above)"
    fi
    mount_overlay "$name" "$lower"
    # remembered for `boot` after `powerfail`, and so that `os-root` never removes it
    echo "$lower" >"$d/os"
    # Everything below writes into the overlay's upper dir only.
    : >"$d/root/etc/machine-id"
    echo "$name" >"$d/root/etc/hostname"
    local u
    for u in $MASK_UNITS; do
        ln -sfn /dev/null "$d/root/etc/systemd/system/$u"
    done
    # Leftovers of the host's own runtime state mean nothing inside (nspawn mounts a tmpfs
    # on /run anyway); a stale docker pid file would only confuse.
    rm -f "$d/root/var/run/docker.pid" 2>/dev/null || true
    # remembered for `boot` after `powerfail`
    : >"$d/binds"
    local b
    for b in "${binds[@]}"; do echo "$b" >>"$d/binds"; done
    : >"$d/console.log"

    local LEADER NSPAWN STATE DV
    launch_and_wait "$name" up
    build_image "$name" "$LEADER"
    probe_container "$LEADER"
    date +%s >"$d/started"
    echo "machine $name up in $(elapsed "$t0")s: leader pid $LEADER, root $d/root ($os)," \
        "systemd $STATE, dockerd $DV, image $IMAGE ok, container probe ok"
}

# ------------------------------------------------------------------------ powerfail, boot
#
# A power loss as far as the machine can tell: its systemd-nspawn and its PID 1 get SIGKILL
# (no shutdown: no unit is stopped, nothing is unmounted or synced from inside, every process
# of the machine dies at once), then the overlay is unmounted, keeping its upper dir. `boot`
# starts the same machine again on the same upper dir, like switching the power back on.
#
# What this does NOT simulate: losing writes still in the page cache. The upper dir is on the
# host's file system and the host's kernel keeps running, so every write() that returned
# before the kill is there after `boot`, fsynced or not. The trial is therefore "a crash at
# any point, then a cold boot with nothing run by hand"; that a file is complete and durable
# after a real power loss rests on the atomic-write helper (temp file, fsync, rename, fsync of
# the directory), not on this harness.

cmd_powerfail() {
    [[ $# == 1 ]] || usage
    local name=$1 d np leader
    check_name "$name"
    need_root
    lock "$name"
    d=$(mdir "$name")
    [[ -d $d/up ]] || die "machine '$name' has no upper dir under $d"
    np=$(nspawn_pid "$name" || true)
    leader=$(leader_pid "$name" || true)
    [[ -n $np || -n $leader ]] || die "machine '$name' is not running"
    # both at once: PID 1 dying takes every process of its PID namespace with it
    kill -KILL ${leader:+"$leader"} ${np:+"$np"} 2>/dev/null || true
    [[ -z $np ]] || wait_gone "$np" 10 || die "systemd-nspawn $np survived SIGKILL"
    [[ -z $leader ]] || wait_gone "$leader" 10 || die "systemd $leader survived SIGKILL"
    remove_cgroups "$name"
    unmount_all_under "$d/root" || die "could not unmount $d/root"
    mountpoint -q "$d/lower" && { umount "$d/lower" || umount -l "$d/lower" || die "could not unmount $d/lower"; }
    rm -f "$d/leader" "$d/nspawn.pid"
    echo "powered-off" >"$d/powerfail"
    log "machine '$name' lost power (upper dir $d/up kept; '$PROG boot $name' starts it again)"
}

cmd_boot() {
    [[ $# == 1 ]] || usage
    local name=$1 d
    check_name "$name"
    need_root
    check_tools
    lock "$name"
    d=$(mdir "$name")
    [[ -d $d/up && -r $d/started ]] || die "machine '$name' was never up (run: $PROG up $name)"
    leader_pid "$name" >/dev/null && die "machine '$name' is running (run: $PROG powerfail $name first)"
    nspawn_pid "$name" >/dev/null && die "systemd-nspawn of '$name' is still running"
    mountpoint -q "$d/root" && die "$d/root is still mounted"
    local t0 lower=/
    t0=$(now)
    [[ -r $d/os ]] && lower=$(cat "$d/os")
    [[ -d $lower/usr ]] || die "the root '$lower' that '$name' booted from is gone"
    mount_overlay "$name" "$lower"
    echo "---- boot after power loss ----" >>"$d/console.log"
    local LEADER NSPAWN STATE DV
    launch_and_wait "$name" boot
    rm -f "$d/powerfail"
    echo "machine $name booted again in $(elapsed "$t0")s: leader pid $LEADER, systemd $STATE, dockerd $DV"
}

# ------------------------------------------------------------------------------- os-root
#
# $OS_CACHE/OS/root-ID: one complete root each, made by mmdebstrap; root-ID.stamp beside it is
# written last (a root without one is a build cut short, removed at the next build);
# $OS_CACHE/OS/current names the one `up` boots. Old roots are removed once no machine boots
# from them ($BASE/*/os), so a rebuild never pulls the lower dir from under a running machine.

os_check() {
    [[ " $OS_SUPPORTED " == *" $1 "* ]] || die "unknown OS '$1' (known: host $OS_SUPPORTED)"
}

os_stamp_field() { # STAMP KEY
    awk -v k="$2" -F': ' '$1 == k { print $2; exit }' "$1" 2>/dev/null
}

os_current() { # OS: print the current complete root, or fail
    local dir=$OS_CACHE/$1 cur
    cur=$(readlink "$dir/current" 2>/dev/null) || return 1
    [[ $cur == root-* && -r $dir/$cur.stamp && -x $dir/$cur/usr/sbin/dockerd && -x $dir/$cur/usr/lib/systemd/systemd ]] || return 1
    [[ $(os_stamp_field "$dir/$cur.stamp" packages) == "$OS_PACKAGES" ]] || return 1
    echo "$dir/$cur"
}

os_in_use() { # ROOT: a machine (up or powered off) boots from ROOT
    local f
    for f in "$BASE"/*/os; do
        [[ -r $f && $(cat "$f") == "$1" ]] && return 0
    done
    return 1
}

os_prune() { # OS: remove roots that are neither current nor in use, and builds cut short
    local dir=$OS_CACHE/$1 cur r
    cur=$(readlink "$dir/current" 2>/dev/null || true)
    for r in "$dir"/root-*; do
        [[ -d $r ]] || continue
        [[ $(basename "$r") == "$cur" ]] && continue
        os_in_use "$r" && continue
        # an interrupted mmdebstrap can leave /proc, /sys, /dev mounted inside
        unmount_all_under "$r" || { warn "cannot unmount everything under $r; leaving it"; continue; }
        rm -rf --one-file-system "$r" && rm -f "$r.stamp"
    done
    for r in "$dir"/root-*.stamp; do
        [[ -e $r && ! -d ${r%.stamp} ]] && rm -f "$r"
    done
    return 0
}

os_build() { # OS: build a new root, make it current; print its path
    local os=$1 dir=$OS_CACHE/$1 id new log
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found (bash scripts/install-deps.sh installs it)"
    mkdir -p "$dir"
    os_prune "$os"
    id=$(date -u +%Y%m%dT%H%M%S)
    new=$dir/root-$id
    log=$dir/build.log
    log "building the Debian $os root in $new (mmdebstrap, about 20 s; log: $log)"
    if ! mmdebstrap --variant=minbase --include="$OS_PACKAGES" "$os" "$new" >"$log" 2>&1; then
        unmount_all_under "$new" || true
        rm -rf --one-file-system "$new"
        echo "---- last lines of $log ----" >&2
        tail -n 15 "$log" >&2
        echo "----" >&2
        die "mmdebstrap could not build the Debian $os root: is the Debian mirror reachable (apt-get update works)? The log is $log"
    fi
    local v
    v=$(chroot "$new" /usr/sbin/dockerd --version 2>&1) || die "the new $os root has no working dockerd: $v"
    {
        echo "packages: $OS_PACKAGES"
        echo "built: $(date +%s)"
        echo "dockerd: $v"
        echo "systemd: $(chroot "$new" /usr/lib/systemd/systemd --version 2>/dev/null | head -n1)"
    } >"$new.stamp.tmp"
    sync -f "$new"
    mv "$new.stamp.tmp" "$new.stamp"
    ln -sfn "root-$id" "$dir/current.tmp"
    mv -T "$dir/current.tmp" "$dir/current"
    os_prune "$os"
    log "Debian $os root ready: $v"
    echo "$new"
}

os_outdated() { # ROOT: a suite it came from was published after it was built (0),
    # are as they were (1), or could not be asked (2)
    local root=$1 built uri suite lm t rc=1
    built=$(os_stamp_field "$root.stamp" built)
    [[ $built =~ ^[0-9]+$ ]] || return 0
    # the sources mmdebstrap wrote into the root: the suite, its updates and security
    while read -r _ uri suite _; do
        [[ -n $uri && -n $suite ]] || continue
        # the Date: field in the first lines of the suite's signed index
        lm=$(curl -sf --max-time 10 "$uri/dists/$suite/InRelease" 2>/dev/null \
            | awk '/^Date: / { sub(/^Date: /, ""); print; exit }' | tr -d '\r') || true
        [[ -n $lm ]] || return 2
        t=$(date -d "$lm" +%s 2>/dev/null) || return 2
        ((t > built)) && rc=0
    done < <(grep -h '^deb ' "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*.list 2>/dev/null)
    return $rc
}

os_root() { # OS [refresh] [MARK]: print a complete root of OS, building or refreshing it as
    # needed; MARK: a file to write its path to while the lock is held (a machine's `os`, so
    # that no concurrent rebuild prunes it between this and the mount)
    local os=$1 refresh=${2:-} mark=${3:-} root
    os_check "$os"
    mkdir -p "$OS_CACHE"
    exec 8>"$OS_CACHE/.$os.lock"
    flock -w 300 8 || die "could not lock $OS_CACHE/.$os.lock (another build of the $os root?)"
    root=$(os_pick "$os" "$refresh") || exit 1
    [[ -z $mark ]] || echo "$root" >"$mark"
    exec 8>&-
    echo "$root"
}

os_pick() { # OS [refresh]: (under the lock) the current root, built or refreshed as needed
    local os=$1 refresh=${2:-} cur new rc=0
    if cur=$(os_current "$os"); then
        if [[ -n $refresh ]]; then
            os_outdated "$cur" || rc=$?
            case $rc in
                0)
                    log "the Debian archive changed since $cur was built: rebuilding"
                    # in a subshell: a failed build dies there, and the old root is kept
                    if new=$(os_build "$os"); then echo "$new"; else
                        warn "keeping $cur: the rebuild failed"
                        echo "$cur"
                    fi
                    ;;
                1) echo "$cur" ;;
                *)
                    warn "cannot reach the Debian mirror to check for newer $os packages; using $cur (built $(date -u -d "@$(os_stamp_field "$cur.stamp" built)" +%FT%TZ))"
                    echo "$cur"
                    ;;
            esac
        else
            echo "$cur"
        fi
    else
        os_build "$os"
    fi
}

cmd_os_root() {
    [[ $# -ge 1 && $# -le 2 ]] || usage
    need_root
    [[ $# == 1 || $2 == --refresh ]] || usage
    os_root "$1" "${2:+refresh}"
}

# ---------------------------------------------------------------------------------- exec

cmd_exec() {
    [[ $# -ge 2 ]] || usage
    local name=$1
    shift
    require_up "$name"
    local leader
    leader=$(leader_pid "$name")
    # Keep the caller's working directory if it exists inside, else start in /.
    # shellcheck disable=SC2016 # expands in the inner sh
    exec nsenter -t "$leader" -a env -i PATH="$INNER_PATH" HOME=/root LANG=C.UTF-8 \
        TERM="${TERM:-dumb}" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' \
        dtm-exec "$PWD" "$@"
}

cmd_root() {
    [[ $# == 1 ]] || usage
    require_up "$1"
    echo "$(mdir "$1")/root"
}

cmd_leader() {
    [[ $# == 1 ]] || usage
    require_up "$1"
    leader_pid "$1"
}

cmd_status() {
    [[ $# == 1 ]] || usage
    check_name "$1"
    leader_pid "$1" >/dev/null
}

main() {
    [[ $# -ge 1 ]] || usage
    local sub=$1
    shift
    case $sub in
        up) cmd_up "$@" ;;
        exec) cmd_exec "$@" ;;
        root) cmd_root "$@" ;;
        leader) cmd_leader "$@" ;;
        status) cmd_status "$@" ;;
        down) cmd_down "$@" ;;
        powerfail) cmd_powerfail "$@" ;;
        boot) cmd_boot "$@" ;;
        down-all) cmd_down_all "$@" ;;
        os-root) cmd_os_root "$@" ;;
        -h | --help | help) usage ;;
        *) echo "$PROG: unknown subcommand '$sub'" >&2; usage ;;
    esac
}

main "$@"
