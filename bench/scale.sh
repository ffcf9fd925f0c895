#!/usr/bin/env bash
# Benchmark: 1000 client certificates (PKI only, [docker] manage = false, on this host): time to
# issue them all in one `apply`, time of `status`, and the service's resident memory holding them.
#   bash bench/scale.sh [CLIENTS]   (default 1000)
set -euo pipefail
N=${1:-1000}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/docker-tls-manager
D=$(mktemp -d)
trap 'kill $SVC 2>/dev/null || true; rm -rf "$D"' EXIT
names=$(seq -f 'client-%04g' 1 "$N" | sed 's/.*/"&"/' | paste -sd, -)
printf '[paths]\ncert_dir = "%s/certs"\nstate_dir = "%s/state"\n[clients]\nnames = [%s]\n[docker]\nmanage = false\n' "$D" "$D" "$names" > "$D/c.toml"
t0=$(date +%s%N); DTM_LOG=warn "$BIN" --config "$D/c.toml" apply > /dev/null; t1=$(date +%s%N)
echo "issue CA + server + $N clients: $(( (t1 - t0) / 1000000 )) ms"
t0=$(date +%s%N); "$BIN" --config "$D/c.toml" status > /dev/null; t1=$(date +%s%N)
echo "status ($((N + 2)) certificates): $(( (t1 - t0) / 1000000 )) ms"
t0=$(date +%s%N); "$BIN" --config "$D/c.toml" status --json > /dev/null; t1=$(date +%s%N)
echo "status --json: $(( (t1 - t0) / 1000000 )) ms"
DTM_LOG=warn "$BIN" --config "$D/c.toml" run & SVC=$!
sleep 5
echo "service holding $N clients, idle: resident memory $(awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$SVC/status), peak $(awk '/^VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$SVC/status)"
