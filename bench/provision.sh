#!/usr/bin/env bash
# Benchmark: from `systemctl enable --now docker-tls-manager` on a stock Docker host (package
# installed, nothing configured) to the first successful `docker version` over mutual TLS.
#   sudo bash bench/provision.sh [ROUNDS]   (default 5; a fresh machine each round)
set -euo pipefail
ROUNDS=${1:-5}
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
ls target/debian/docker-tls-manager_*.deb > /dev/null 2>&1 || bash packaging/build.sh > /dev/null
DEB=$(ls target/debian/docker-tls-manager_*.deb)
for i in $(seq "$ROUNDS"); do
    NAME=dtm-prov-$$-$i
    bash "$M" up "$NAME" > /dev/null
    cp "$DEB" "$(bash "$M" root "$NAME")/root/"
    DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c 'apt-get install -y /root/docker-tls-manager_*.deb > /dev/null 2>&1
      export DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/var/lib/docker-tls-manager/clients/admin
      t0=$(date +%s%N); systemctl enable --now docker-tls-manager 2>/dev/null
      until docker version > /dev/null 2>&1; do sleep 0.01; done; t1=$(date +%s%N)
      echo "round: $(( (t1 - t0) / 1000000 )) ms"'
    bash "$M" down "$NAME" > /dev/null
done
