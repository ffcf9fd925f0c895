#!/usr/bin/env bash
# Reliability: SIGKILL at random points, TRIALS times each.
#  1. PKI (this host, [docker] manage = false): `renew --force all` killed after 0-30 ms. Right
#     after the kill every file must be complete (parses); after the next `apply` every key must
#     match its certificate, every chain verify, and no temp file remain.
#  2. Docker (a throwaway systemd + dockerd machine): `renew --force server` killed after
#     0-1500 ms (during issuance, file writes, the restart job or the verification); then
#     `apply` must leave Docker serving the certificate on disk over mutual TLS, no temp files.
#   sudo bash bench/crash.sh [TRIALS]   (default 50)
set -euo pipefail
TRIALS=${1:-50}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/docker-tls-manager
D=$(mktemp -d)
M=tests/machine/machine.sh
NAME=dtm-crash-$$
trap 'rm -rf "$D"; bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT
printf '[paths]\ncert_dir = "%s/certs"\nstate_dir = "%s/state"\n[clients]\nnames = ["a", "b", "c"]\n[docker]\nmanage = false\n' "$D" "$D" > "$D/c.toml"
DTM_LOG=off "$BIN" --config "$D/c.toml" apply > /dev/null

consistent() {   # every key matches its certificate, every chain verifies
    local ca=$D/certs/ca.pem
    for pair in "$D/certs/server-cert.pem $D/certs/server-key.pem" \
                "$D/state/clients/a/cert.pem $D/state/clients/a/key.pem" \
                "$D/state/clients/b/cert.pem $D/state/clients/b/key.pem" \
                "$D/state/clients/c/cert.pem $D/state/clients/c/key.pem"; do
        set -- $pair
        [[ "$(openssl x509 -in "$1" -noout -pubkey)" == "$(openssl pkey -in "$2" -pubout)" ]] || return 1
        openssl verify -CAfile "$ca" "$1" > /dev/null 2>&1 || return 1
    done
    [[ "$(openssl x509 -in "$ca" -noout -pubkey)" == "$(openssl pkey -in "$D/state/ca-key.pem" -pubout)" ]]
}
complete() {     # every file parses: nothing half-written
    for f in $(find "$D/certs" "$D/state" -name '*.pem' -not -path '*/backup/*'); do
        case $f in
            *key.pem) openssl pkey -in "$f" -noout 2> /dev/null || { echo "incomplete: $f"; return 1; } ;;
            *) openssl x509 -in "$f" -noout 2> /dev/null || { echo "incomplete: $f"; return 1; } ;;
        esac
    done
}
pki_ok=0; interrupted=0
for i in $(seq "$TRIALS"); do
    DTM_LOG=off "$BIN" --config "$D/c.toml" renew --force all > /dev/null 2>&1 & pid=$!
    sleep "0.0$(( RANDOM % 30 ))"; kill -9 $pid 2> /dev/null || true; wait $pid 2> /dev/null || true
    complete || { echo "trial $i: a file was left incomplete"; exit 1; }
    consistent || interrupted=$((interrupted + 1))
    DTM_LOG=off "$BIN" --config "$D/c.toml" apply > /dev/null
    if consistent && [[ -z $(find "$D" -name '.dtm-tmp-*') ]]; then pki_ok=$((pki_ok + 1)); else echo "trial $i: not repaired"; fi
done
echo "PKI: $pki_ok/$TRIALS consistent after the next apply ($interrupted kills landed between a key and its certificate; every file complete after every kill)"

bash "$M" up "$NAME" > /dev/null
cp "$BIN" "$(bash "$M" root "$NAME")/usr/local/bin/"
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
in_m 'DTM_LOG=off docker-tls-manager apply > /dev/null; docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000 > /dev/null'
pid0=$(in_m "docker inspect -f '{{.State.Pid}}' c1")
docker_ok=0
for i in $(seq "$TRIALS"); do
    ms=$(( RANDOM % 1500 ))
    r=$(in_m "DTM_LOG=off docker-tls-manager renew --force server > /dev/null 2>&1 & p=\$!; sleep $(printf '%d.%03d' $((ms / 1000)) $((ms % 1000))); kill -9 \$p 2>/dev/null; wait \$p 2>/dev/null
      DTM_LOG=off docker-tls-manager apply > /dev/null 2>&1 || echo apply-failed
      C=/var/lib/docker-tls-manager/clients/admin
      s=\$(openssl s_client -connect 127.0.0.1:2376 -cert \$C/cert.pem -key \$C/key.pem -CAfile \$C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
      d=\$(openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256)
      [ -n \"\$s\" ] && [ \"\$s\" = \"\$d\" ] && systemctl is-active docker > /dev/null && [ -z \"\$(find /etc/docker /var/lib/docker-tls-manager /etc/systemd/system -name '.dtm-tmp-*')\" ] && echo healthy")
    if [[ $r == *healthy* ]]; then docker_ok=$((docker_ok + 1)); else echo "trial $i (kill at ${ms} ms): $r"; fi
done
pid1=$(in_m "docker inspect -f '{{.State.Pid}}' c1")
echo "Docker: $docker_ok/$TRIALS healthy and serving the certificate on disk after the next apply; container pid $pid0 -> $pid1"
