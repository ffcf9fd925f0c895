#!/usr/bin/env bash
# Benchmark: what Docker's authorization plugin (docker-tls-manager authz serve) adds to each
# Docker API request. Boots a throwaway systemd + dockerd machine, configures it with the
# release binary, then in the same run measures N requests each of GET /_ping and
# GET /containers/json over mutual TLS and over the unix socket, without the plugin
# ([authz] enabled = false) and with it, alternating ROUNDS times; and the plugin's memory.
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
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
in_m 'mkdir -p /etc/docker-tls-manager && for i in 1 2 3; do docker run -d --network none dtm-busybox /bin/sleep 100000 >/dev/null; done'
measure() {
    in_m "printf '[authz]\nenabled = $1\n' > /etc/docker-tls-manager/config.toml && docker-tls-manager apply >/dev/null"
    in_m "python3 /usr/local/bin/dtm-authz-latency /var/lib/docker-tls-manager/clients/admin 127.0.0.1:2376 $N $2"
}
for r in $(seq "$ROUNDS"); do
    measure false without
    measure true with
    in_m 'P=$(systemctl show -p MainPID --value docker-tls-manager-authz.service); echo "plugin rss_kib=$(awk "/^VmRSS/ {print \$2}" /proc/$P/status) threads=$(ls /proc/$P/task | wc -l)"'
done
