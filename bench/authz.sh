#!/usr/bin/env bash
# Benchmark: what Docker's authorization plugin (docker-tls-manager authz serve) adds to each
# Docker API request. Boots a throwaway systemd + dockerd machine, configures it with the
# release binary, then in the same run measures N requests each of GET /_ping and
# GET /containers/json over mutual TLS and over the unix socket, without the plugin
# ([authz] enabled = false), with it, and with the floor (bench/floor_plugin.c: a plugin that
# allows everything unread, the cost of Docker's plugin machinery alone), alternating ROUNDS
# times; and the plugin's memory.
#   sudo bash bench/authz.sh [N] [ROUNDS]   (default 2000, 2)
set -euo pipefail
N=${1:-2000}
ROUNDS=${2:-2}
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
NAME=dtm-authzbench-$$
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT
cargo build --release --quiet
bash "$M" up "$NAME" >/dev/null
R=$(bash "$M" root "$NAME")
cp "${CARGO_TARGET_DIR:-target}/release/docker-tls-manager" "$R/usr/local/bin/"
cp bench/authz_latency.py "$R/usr/local/bin/dtm-authz-latency"
cp bench/answer_times.py "$R/usr/local/bin/dtm-answer-times"
gcc -O2 -static -o "$R/usr/local/bin/dtm-floor-plugin" bench/floor_plugin.c -lpthread
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
in_m 'mkdir -p /etc/docker-tls-manager && for i in 1 2 3; do docker run -d --network none dtm-busybox /bin/sleep 100000 >/dev/null; done'
measure() {
    in_m "printf '[authz]\nenabled = $1\n[service]\nmetrics_file = \"/run/dtm-bench/dtm.prom\"\n' > /etc/docker-tls-manager/config.toml && mkdir -p /run/dtm-bench && docker-tls-manager apply >/dev/null"
    in_m "python3 /usr/local/bin/dtm-authz-latency /var/lib/docker-tls-manager/clients/admin 127.0.0.1:2376 $N $2"
}
# The plugin's own answer times (its metrics file, written every 5 s): the share of answers
# within each bucket.
answer_times() {
    in_m 'sleep 6; python3 /usr/local/bin/dtm-answer-times /run/dtm-bench/docker-tls-manager-authz.prom'
}
# The floor: our plugin off, the manager stopped (it would repair daemon.json), the floor
# plugin named in daemon.json and Docker reloaded; then all put back.
floor() {
    in_m "printf '[authz]\nenabled = false\n' > /etc/docker-tls-manager/config.toml && docker-tls-manager apply >/dev/null
        systemctl stop docker-tls-manager.service 2>/dev/null || true
        cp /etc/docker/daemon.json /tmp/daemon.json.bench
        systemd-run --unit dtm-floor /usr/local/bin/dtm-floor-plugin /run/docker/plugins/dtm-floor.sock >/dev/null
        sleep 0.2
        python3 -c 'import json; d=json.load(open(\"/etc/docker/daemon.json\")); d[\"authorization-plugins\"]=[\"dtm-floor\"]; json.dump(d, open(\"/etc/docker/daemon.json\",\"w\"))'
        systemctl reload docker && sleep 1"
    in_m "python3 /usr/local/bin/dtm-authz-latency /var/lib/docker-tls-manager/clients/admin 127.0.0.1:2376 $N floor"
    in_m "cp /tmp/daemon.json.bench /etc/docker/daemon.json && systemctl reload docker && sleep 1 && systemctl stop dtm-floor"
}
OUT=$(mktemp)
for r in $(seq "$ROUNDS"); do
    measure false without
    floor
    measure true with
    answer_times
    in_m 'P=$(systemctl show -p MainPID --value docker-tls-manager-authz.service); echo "plugin rss_kib=$(awk "/^VmRSS/ {print \$2}" /proc/$P/status) threads=$(ls /proc/$P/task | wc -l)"'
done | tee -a "$OUT"
echo
python3 bench/authz_summary.py < "$OUT"
rm -f "$OUT"
