#!/usr/bin/env bash
# Benchmark: the service idle. Boots a throwaway systemd + dockerd machine, starts the service
# from its unit, lets it settle, then over MINUTES of idleness measures resident memory,
# CPU seconds and wake-ups (voluntary context switches of all its threads) per minute.
#   sudo bash bench/idle.sh [MINUTES]   (default 10)
set -euo pipefail
MINUTES=${1:-10}
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
NAME=dtm-idle-$$
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT
cargo build --release --quiet
bash "$M" up "$NAME" >/dev/null
R=$(bash "$M" root "$NAME")
cp target/release/docker-tls-manager "$R/usr/bin/"
cp systemd/docker-tls-manager.service systemd/docker-tls-manager-prepare.service "$R/etc/systemd/system/"
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
in_m 'systemctl daemon-reload && systemctl enable --now docker-tls-manager'
sleep 60   # let the start-up convergence and its follow-ups settle
sample() {
    in_m 'P=$(systemctl show -p MainPID --value docker-tls-manager)
      cs=0; for t in /proc/$P/task/*; do v=$(awk "/^voluntary_ctxt_switches/ {print \$2}" $t/status); n=$(awk "/^nonvoluntary_ctxt_switches/ {print \$2}" $t/status); cs=$((cs+v+n)); done
      ticks=$(awk "{print \$14+\$15}" /proc/$P/stat)
      rss=$(awk "/^VmRSS/ {print \$2}" /proc/$P/status)
      threads=$(ls /proc/$P/task | wc -l)
      echo "$cs $ticks $rss $threads"'
}
read -r cs0 t0 _ _ <<< "$(sample)"
sleep $((MINUTES * 60))
read -r cs1 t1 rss threads <<< "$(sample)"
hz=$(getconf CLK_TCK)
awk -v m="$MINUTES" -v cs=$((cs1 - cs0)) -v t=$((t1 - t0)) -v hz="$hz" -v rss="$rss" -v th="$threads" 'BEGIN {
    printf "idle %d min: resident memory %.1f MiB (%d threads), CPU %.2f s, wake-ups %.2f per minute\n", m, rss / 1024, th, t / hz, cs / m
}'
