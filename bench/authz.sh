#!/usr/bin/env bash
# Benchmark: what Docker's authorization plugin (docker-tls-manager authz serve) adds to each
# Docker API request. Boots a throwaway systemd + dockerd machine, configures it with the
# release binary, then in the same run measures N requests each of GET /_ping and
# GET /containers/json over mutual TLS and over the unix socket three ways: without a plugin
# ([authz] enabled = false), with the floor (bench/floor_plugin.c: a plugin that allows
# everything unread, the cost of Docker's plugin machinery alone), and with ours; ROUNDS
# rounds, the order of the three rotated from round to round. Then the medians over rounds
# (bench/authz_summary.py), the plugin's own answer times and its memory.
#   sudo bash bench/authz.sh [N] [ROUNDS]   (default 2000, 3)
#   DTM_MACHINE_OS=trixie: on Debian 13 (dockerd 26) instead of this host's OS
set -euo pipefail
N=${1:-2000}
ROUNDS=${2:-3}
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
NAME=dtm-authzbench-$$
OUT=$(mktemp)
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true; rm -f "$OUT"' EXIT
cargo build --release --quiet
bash "$M" up "$NAME" >/dev/null
R=$(bash "$M" root "$NAME")
cp "${CARGO_TARGET_DIR:-target}/release/docker-tls-manager" "$R/usr/local/bin/"
cp bench/authz_latency.py "$R/usr/local/bin/dtm-authz-latency"
cp bench/answer_times.py "$R/usr/local/bin/dtm-answer-times"
gcc -O2 -static -o "$R/usr/local/bin/dtm-floor-plugin" bench/floor_plugin.c -lpthread
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "set -euo pipefail; $*"; }
in_m 'mkdir -p /etc/docker-tls-manager /run/dtm-bench && for i in 1 2 3; do docker run -d --network none dtm-busybox /bin/sleep 100000 >/dev/null; done'
# Our plugin on (true) or off (false); the metrics file gives the plugin's answer times.
configure() {
    in_m "printf '[authz]\nenabled = $1\n[service]\nmetrics_file = \"/run/dtm-bench/dtm.prom\"\n' > /etc/docker-tls-manager/config.toml && docker-tls-manager apply >/dev/null"
}
latency() {
    in_m "python3 /usr/local/bin/dtm-authz-latency /var/lib/docker-tls-manager/clients/admin 127.0.0.1:2376 $N $1"
}
without() {
    configure false
    latency without
}
ours() {
    configure true
    latency with
    # Its metrics file is written every 5 s.
    in_m 'sleep 6; python3 /usr/local/bin/dtm-answer-times /run/dtm-bench/docker-tls-manager-authz.prom'
    in_m 'P=$(systemctl show -p MainPID --value docker-tls-manager-authz.service); echo "plugin rss_kib=$(awk "/^VmRSS/ {print \$2}" /proc/$P/status) threads=$(ls /proc/$P/task | wc -l)"'
}
# The floor: ours off, the floor plugin named in daemon.json and Docker reloaded; then
# daemon.json put back as it was (byte for byte: the manager's checksum still matches) and
# Docker reloaded before the floor stops. It must have been asked about every request.
floor() {
    configure false
    in_m "cp /etc/docker/daemon.json /tmp/daemon.json.bench
        systemd-run --collect --unit dtm-floor /usr/local/bin/dtm-floor-plugin /run/docker/plugins/dtm-floor.sock >/dev/null
        sleep 0.2
        python3 -c 'import json; d=json.load(open(\"/etc/docker/daemon.json\")); d[\"authorization-plugins\"]=[\"dtm-floor\"]; json.dump(d, open(\"/etc/docker/daemon.json\",\"w\"))'
        systemctl reload docker && sleep 1"
    latency floor
    in_m "cp /tmp/daemon.json.bench /etc/docker/daemon.json && systemctl reload docker && sleep 1 && systemctl stop dtm-floor"
    local calls
    calls=$(in_m "journalctl -u dtm-floor -o cat | sed -n 's/^floor: \([0-9]*\) AuthZReq calls$/\1/p' | tail -1")
    if [ "${calls:-0}" -lt $((4 * (N + 50))) ]; then
        echo "the floor plugin was asked about ${calls:-no} requests, fewer than the $((4 * (N + 50))) measured" >&2
        exit 1
    fi
}
ORDERS=("without floor ours" "floor ours without" "ours without floor")
for r in $(seq "$ROUNDS"); do
    for way in ${ORDERS[$(((r - 1) % 3))]}; do
        "$way"
    done
done | tee "$OUT"
echo
python3 bench/authz_summary.py < "$OUT"
