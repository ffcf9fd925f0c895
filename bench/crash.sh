#!/usr/bin/env bash
# Reliability: SIGKILL at random points, TRIALS times each.
#  1. PKI (this host, [docker] manage = false): `renew --force all` killed after 0-30 ms. Right
#     after the kill every file must be complete (parses); after the next `apply` every key must
#     match its certificate, every chain verify, and no temp file remain.
#  2. Docker (a throwaway systemd + dockerd machine): `renew --force server` killed after
#     0-1500 ms (during issuance, file writes, the restart job or the verification); then
#     `apply` must leave Docker serving the certificate on disk over mutual TLS, no temp files.
#  3. Power loss (the same kind of machine): `apply` on a stock host (odd trials) or `renew
#     --force server` on a configured one (even trials) killed after 0-1500 ms, then the
#     machine loses power (machine.sh powerfail: SIGKILL to nspawn and the machine's systemd,
#     no shutdown) and boots again (machine.sh boot) with nothing of ours run by hand: Docker
#     must be active and port 2376 closed or mutual TLS, never plain HTTP. The overlay's upper
#     dir is on the host's file system, so unsynced writes survive: this is "a crash at a
#     random point, then a cold boot"; durability is the atomic-write helper's fsyncs' job.
#   sudo bash bench/crash.sh [TRIALS] [--power-loss-only]   (default 50)
#   DTM_BENCH_PROFILE=debug uses a debug build (default release); CARGO_TARGET_DIR is honoured.
set -euo pipefail
TRIALS=${1:-50}
ONLY=${2:-}
cd "$(dirname "$0")/.."
PROFILE=${DTM_BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [[ $PROFILE == release ]]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN=$TARGET/$PROFILE/docker-tls-manager
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
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }

power_loss() {
    local NAME=$NAME-pl   # in_m sees this one (dynamic scope)
    bash "$M" up "$NAME" > /dev/null
    cp "$BIN" "$(bash "$M" root "$NAME")/usr/local/bin/"
    local tls=0 closed=0 plain=0 down=0 other=0 landed=0 i ms cmd r
    for i in $(seq "$TRIALS"); do
        if ((i % 2)); then
            cmd=apply   # a stock host: no PKI, no units, no daemon.json keys
            in_m 'DTM_LOG=off docker-tls-manager deconfigure > /dev/null 2>&1; rm -rf /etc/docker/tls /var/lib/docker-tls-manager
                  [ ! -e /etc/systemd/system/docker-tcp.socket ] && [ ! -e /etc/docker/daemon.json ]' || { echo "trial $i: not back to stock"; exit 1; }
        else
            cmd='renew --force server'
            in_m 'DTM_LOG=off docker-tls-manager apply > /dev/null' || { echo "trial $i: apply failed before the trial"; exit 1; }
        fi
        in_m 'systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; docker rm -f c1 >/dev/null 2>&1; docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000 > /dev/null'
        ms=$(( RANDOM % 1500 ))
        r=$(in_m "DTM_LOG=off docker-tls-manager $cmd > /dev/null 2>&1 & p=\$!; sleep $(printf '%d.%03d' $((ms / 1000)) $((ms % 1000))); kill -9 \$p 2>/dev/null && echo landed; wait \$p 2>/dev/null; true")
        [[ $r == *landed* ]] && landed=$((landed + 1))
        DTM_MACHINE_QUIET=1 bash "$M" powerfail "$NAME"
        DTM_MACHINE_QUIET=1 DTM_MACHINE_TIMEOUT=30 bash "$M" boot "$NAME" > /dev/null 2>&1 || true
        # nothing of ours has run since the boot: look
        r=$(in_m 'C=/var/lib/docker-tls-manager/clients/admin
            [ "$(curl -s --max-time 10 http://127.0.0.1:2376/_ping)" = OK ] && echo PLAIN
            systemctl is-active docker.service > /dev/null || echo docker-down
            if timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/2376" 2>/dev/null; then
                [ "$(curl -s --max-time 20 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping)" = OK ] && echo tls || echo other
            else echo closed; fi' 2>&1 || echo "exec-failed")
        case $r in
            *PLAIN*) plain=$((plain + 1)); echo "trial $i ($cmd killed at ${ms} ms): PLAIN HTTP SERVED: $r" ;;
            *docker-down*) down=$((down + 1)); echo "trial $i ($cmd killed at ${ms} ms): docker not active after boot: $r" ;;
            tls) tls=$((tls + 1)) ;;
            closed) closed=$((closed + 1)) ;;
            *) other=$((other + 1)); echo "trial $i ($cmd killed at ${ms} ms): $r" ;;
        esac
        in_m 'systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; DTM_LOG=off docker-tls-manager apply > /dev/null 2>&1' \
            || echo "trial $i ($cmd killed at ${ms} ms): apply after the boot failed"
    done
    echo "Power loss: $((tls + closed))/$TRIALS booted with Docker active and 2376 closed or mutual TLS ($tls mutual TLS, $closed closed); plain HTTP $plain, Docker down $down, other $other; $landed kills landed before the command ended"
    bash "$M" down "$NAME" > /dev/null 2>&1 || true
}
if [[ $ONLY == --power-loss-only ]]; then
    trap 'rm -rf "$D"; bash "$M" down "$NAME-pl" >/dev/null 2>&1 || true' EXIT
    power_loss
    exit 0
fi

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
bash "$M" down "$NAME" > /dev/null 2>&1 || true
trap 'rm -rf "$D"; bash "$M" down "$NAME-pl" >/dev/null 2>&1 || true' EXIT
power_loss
