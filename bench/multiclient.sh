#!/usr/bin/env bash
# Benchmark: CLIENTS clients polling GET /containers/json over mutual TLS in parallel (each a new
# connection every 50 ms: bench/poller.py) during ROTATIONS forced server-certificate rotations
# (`docker-tls-manager renew --force server`, 2 s apart), on Debian 12 (dockerd 20.10) and
# Debian 13 (dockerd 26.1.5) machines: requests, failures by kind, the longest gap a client saw.
#   sudo bash bench/multiclient.sh [ROTATIONS [CLIENTS [OS...]]]   (default 5 8 host trixie)
set -euo pipefail
ROTATIONS=${1:-5}
CLIENTS=${2:-8}
shift $(($# > 2 ? 2 : $#))
OSES=("$@")
((${#OSES[@]})) || OSES=(host trixie)
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
NAME=""
trap '[[ -z $NAME ]] || bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT
cargo build --release --quiet
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
C=/var/lib/docker-tls-manager/clients/admin

for os in "${OSES[@]}"; do
    NAME=dtm-mc-$os-$$
    DTM_MACHINE_OS=$os bash "$M" up "$NAME" >/dev/null
    R=$(bash "$M" root "$NAME")
    cp target/release/docker-tls-manager "$R/usr/local/bin/"
    cp bench/poller.py "$R/root/poller.py"
    in_m "DTM_LOG=warn docker-tls-manager apply >/dev/null"
    in_m "docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000 >/dev/null"
    echo "$os: $(in_m 'dockerd --version'), $(in_m 'systemctl --version | head -n1')"
    echo "  $CLIENTS clients x GET /containers/json every 50 ms, $ROTATIONS x renew --force server"
    in_m "rm -f /tmp/stop /tmp/mc-*.txt
      for c in \$(seq $CLIENTS); do (python3 /root/poller.py $C 127.0.0.1:2376 /tmp/stop 0.05 /containers/json > /tmp/mc-\$c.txt &); done
      sleep 1
      for i in \$(seq $ROTATIONS); do DTM_LOG=warn docker-tls-manager renew --force server >/dev/null; sleep 2; done
      touch /tmp/stop; for i in \$(seq 100); do [ \$(grep -l requests= /tmp/mc-*.txt 2>/dev/null | wc -l) -ge $CLIENTS ] && break; sleep 0.2; done"
    in_m "cat /tmp/mc-*.txt" | python3 -c '
import ast, re, sys
req = ok = failed = gap = 0
errors = {}
for line in sys.stdin:
    f = dict(re.findall(r"(\w+)=(\d+)", line))
    req += int(f["requests"]); ok += int(f["ok"]); failed += int(f["failed"])
    gap = max(gap, int(f["longest_gap_ms"]))
    for k, v in ast.literal_eval(line.split("errors=", 1)[1]).items():
        errors[k] = errors.get(k, 0) + v
print(f"  requests={req} ok={ok} failed={failed} longest_gap_ms={gap} errors={errors}")'
    echo "  container c1 still running: $(in_m "docker inspect -f '{{.State.Running}}' c1")"
    bash "$M" down "$NAME" >/dev/null
    NAME=""
done
