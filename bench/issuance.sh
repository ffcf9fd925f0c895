#!/usr/bin/env bash
# Benchmark: CA + server + client issuance with the defaults (one `apply`, PKI only) against
# the classic openssl RSA-4096 flow from Docker's guide, in the same run. Not a test: it
# prints numbers for docs/benchmarks.md.
#   bash bench/issuance.sh [ROUNDS]   (default 10)
set -euo pipefail
ROUNDS=${1:-10}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/docker-tls-manager
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

now() { date +%s%N; }

ours() {
    local d=$WORK/ours-$1
    mkdir -p "$d"
    printf '[paths]\ncert_dir = "%s/certs"\nstate_dir = "%s/state"\n[docker]\nmanage = false\n' "$d" "$d" > "$d/c.toml"
    DTM_LOG=warn "$BIN" --config "$d/c.toml" apply > /dev/null
}

openssl_flow() {
    local d=$WORK/openssl-$1
    mkdir -p "$d" && cd "$d"
    openssl genrsa -out ca-key.pem 4096 2>/dev/null
    openssl req -new -x509 -days 365 -key ca-key.pem -sha256 -out ca.pem -subj "/CN=bench-ca" 2>/dev/null
    openssl genrsa -out server-key.pem 4096 2>/dev/null
    openssl req -subj "/CN=$(hostname)" -sha256 -new -key server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName = DNS:%s,IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' "$(hostname)" > extfile.cnf
    openssl x509 -req -days 365 -sha256 -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -extfile extfile.cnf 2>/dev/null
    openssl genrsa -out key.pem 4096 2>/dev/null
    openssl req -subj '/CN=client' -new -key key.pem -out client.csr 2>/dev/null
    echo extendedKeyUsage = clientAuth > extfile-client.cnf
    openssl x509 -req -days 365 -sha256 -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -extfile extfile-client.cnf 2>/dev/null
    cd - > /dev/null
}

measure() {
    local fn=$1 total=0 t0 t1
    for i in $(seq 1 "$ROUNDS"); do
        t0=$(now); "$fn" "$i"; t1=$(now)
        total=$((total + t1 - t0))
    done
    echo $((total / ROUNDS))
}

ours_ns=$(measure ours)
openssl_ns=$(measure openssl_flow)
echo "rounds: $ROUNDS   machine: $(nproc) cores, $(openssl version)"
awk -v o="$ours_ns" -v s="$openssl_ns" 'BEGIN {
    printf "docker-tls-manager apply (ecdsa-p256, CA+server+client, whole process): %8.2f ms\n", o / 1e6
    printf "openssl RSA-4096 flow (genrsa x3 + req + x509 signing):              %8.2f ms\n", s / 1e6
    printf "ratio: %.0fx faster\n", s / o
}'
