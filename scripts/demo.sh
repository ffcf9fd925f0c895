#!/usr/bin/env bash
# The main job, end to end, on a stock Docker host: a throwaway systemd + dockerd machine
# (Debian's docker.io, docker.service with -H fd://). Prints each step and its result.
#   sudo bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "demo: run as root (it boots a systemd-nspawn machine)" >&2; exit 2; }
M=tests/machine/machine.sh
NAME=dtm-demo-$$
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT

step "build"
cargo build --release --quiet
step "boot a stock Docker host (systemd, D-Bus, docker.io) in a throwaway machine"
bash "$M" up "$NAME"
cp target/release/docker-tls-manager "$(bash "$M" root "$NAME")/usr/local/bin/"
in_m 'systemctl cat docker.service | grep ^ExecStart=; docker run -d --network none --name web dtm-busybox /bin/sleep 100000 >/dev/null; echo "container web running, pid $(docker inspect -f {{.State.Pid}} web)"'

step "docker-tls-manager apply   (CA, certificates, docker-tcp.socket, drop-in, daemon.json, restart, verify)"
in_m 'DTM_LOG=warn docker-tls-manager apply'

step "docker-tls-manager status"
in_m 'docker-tls-manager status | head -30'

step "hand the client its bundle (tar.gz for ~/.docker, DOCKER_CERT_PATH, Portainer)"
in_m 'docker-tls-manager client bundle admin -o /root/admin.tar.gz --host localhost'
mkdir -p /tmp/$NAME-client
cp "$(bash "$M" root "$NAME")/root/admin.tar.gz" /tmp/$NAME-client/
tar -xzf /tmp/$NAME-client/admin.tar.gz -C /tmp/$NAME-client
ls -l /tmp/$NAME-client

step "docker over TLS from a separate client (this host's docker CLI, in the machine's network)"
nsenter -t "$(bash "$M" leader "$NAME")" -n env DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/tmp/$NAME-client \
    docker version --format 'client {{.Client.Version}} -> server {{.Server.Version}} over mutual TLS'
echo "without a client certificate:"
nsenter -t "$(bash "$M" leader "$NAME")" -n curl -sS --max-time 5 --cacert /tmp/$NAME-client/ca.pem https://localhost:2376/_ping 2>&1 | tail -1 || true

step "forced rotation of the server certificate while a client polls /_ping every 50 ms"
in_m 'C=/var/lib/docker-tls-manager/clients/admin; ( ok=0; fail=0; end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do
  if [ "$(curl -s --max-time 30 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping)" = OK ]; then ok=$((ok+1)); else fail=$((fail+1)); fi; sleep 0.05; done
  echo "poller: $ok ok, $fail failed" ) & sleep 1; DTM_LOG=warn docker-tls-manager renew --force server; wait
  echo "container web pid now $(docker inspect -f {{.State.Pid}} web) (unchanged: live-restore)"'

step "docker-tls-manager deconfigure   (Docker back as it was; certificates kept)"
in_m 'DTM_LOG=warn docker-tls-manager deconfigure; curl -s --max-time 3 http://127.0.0.1:2376/ || echo "port 2376 closed (curl exit $?)"; systemctl is-active docker'
rm -rf /tmp/$NAME-client
step "done"
