#!/usr/bin/env bash
# The main job, end to end, as a user lives it: build the .deb, then on a stock Docker host (a
# throwaway systemd + dockerd machine with Debian's docker.io) install it, enable the service,
# look at the status, hand a client its bundle, use docker over TLS, rotate the server
# certificate under a polling client, an admin's rewrite of daemon.json, uninstall. Prints each step and its result.
#   sudo bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "demo: run as root (it boots a systemd-nspawn machine)" >&2; exit 2; }
bash scripts/install-deps.sh
M=tests/machine/machine.sh
NAME=dtm-demo-$$
CLIENT_DIR=$(mktemp -d)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true; rm -rf "$CLIENT_DIR"' EXIT

step "build the packages (packaging/build.sh)"
bash packaging/build.sh > /tmp/dtm-demo-build.log 2>&1 || { tail -20 /tmp/dtm-demo-build.log; exit 1; }
DEB=$(ls target/debian/docker-tls-manager_*.deb)
echo "$DEB"

step "a stock Docker host: systemd, D-Bus, docker.io (throwaway machine)"
bash "$M" up "$NAME"
cp "$DEB" "$(bash "$M" root "$NAME")/root/"
# As on a real host: no policy-rc.d (the machine boots this host's tree, a Docker image whose
# policy-rc.d forbids maintainer scripts to start or stop services).
in_m 'rm -f /usr/sbin/policy-rc.d'
in_m 'systemctl cat docker.service | grep ^ExecStart=; docker run -d --network none --name web dtm-busybox /bin/sleep 100000 >/dev/null; echo "container web running, pid $(docker inspect -f {{.State.Pid}} web)"'

step "apt install ./docker-tls-manager_*.deb"
in_m 'cd /root && apt-get install -y ./docker-tls-manager_*.deb 2>&1 | tail -2; echo "service: $(systemctl is-enabled docker-tls-manager), $(systemctl is-active docker-tls-manager) (install starts nothing)"'

step "systemctl enable --now docker-tls-manager"
in_m 'time systemctl enable --now docker-tls-manager 2>&1; systemctl status docker-tls-manager --no-pager | sed -n "1,4p;/Status:/p"'

step "docker-tls-manager status"
in_m 'docker-tls-manager status | sed -n "/^server/,/files/p;/^docker:/,\$p"'

step "hand the client its bundle (tar.gz for ~/.docker, DOCKER_CERT_PATH, Portainer)"
in_m 'docker-tls-manager client bundle admin -o /root/admin.tar.gz --host localhost'
cp "$(bash "$M" root "$NAME")/root/admin.tar.gz" "$CLIENT_DIR/"
tar -xzf "$CLIENT_DIR/admin.tar.gz" -C "$CLIENT_DIR"
ls -l "$CLIENT_DIR"

step "docker over mutual TLS from a separate client (this host's docker CLI, in the machine's network)"
LEADER=$(bash "$M" leader "$NAME")
nsenter -t "$LEADER" -n env DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$CLIENT_DIR" \
    docker version --format 'client {{.Client.Version}} -> server {{.Server.Version}}: OK'
nsenter -t "$LEADER" -n env DOCKER_HOST=tcp://localhost:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$CLIENT_DIR" \
    docker ps --format 'container {{.Names}}: {{.Status}}'
echo "without a client certificate:"
nsenter -t "$LEADER" -n curl -sS --max-time 5 --cacert "$CLIENT_DIR/ca.pem" https://localhost:2376/_ping 2>&1 | tail -1 || true

step "forced rotation of the server certificate while a client polls /_ping every 50 ms"
in_m 'C=/var/lib/docker-tls-manager/clients/admin; P=$(docker inspect -f {{.State.Pid}} web)
  ( ok=0; fail=0; end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do
    if [ "$(curl -s --max-time 30 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping)" = OK ]; then ok=$((ok+1)); else fail=$((fail+1)); fi; sleep 0.05; done
    echo "poller: $ok ok, $fail failed" ) & sleep 1; DTM_LOG=warn docker-tls-manager renew --force server; wait
  echo "container web pid $P -> $(docker inspect -f {{.State.Pid}} web)"'

step "with the service stopped, someone rewrites daemon.json without the TLS keys and restarts Docker"
in_m 'systemctl stop docker-tls-manager; printf "{\"live-restore\": true}\n" > /etc/docker/daemon.json; systemctl restart docker
  echo "docker: $(systemctl is-active docker); plain http://localhost:2376: $(curl -s --max-time 3 http://127.0.0.1:2376/_ping || echo "refused (curl exit $?)")"
  journalctl -u docker-tls-manager-guard --no-pager | grep -o "guard: .*tlsverify[^,;]*" | tail -1
  echo "container web pid $(docker inspect -f {{.State.Pid}} web)"'

step "systemctl start docker-tls-manager   (it puts the keys back and opens the port again)"
in_m 'systemctl start docker-tls-manager; echo "TLS keys in daemon.json: $(grep -c tls /etc/docker/daemon.json); docker-tcp.socket: $(systemctl is-active docker-tcp.socket)"
  echo "container web pid $(docker inspect -f {{.State.Pid}} web)"'

step "apt remove docker-tls-manager   (Docker put back as it was; the CA and certificates stay)"
in_m 'apt-get remove -y docker-tls-manager 2>&1 | grep -E "docker-tls-manager:|Removing" ; echo "docker: $(systemctl is-active docker); port 2376: $(curl -s --max-time 3 http://127.0.0.1:2376/_ping || echo "closed (curl exit $?)")"; echo "container web pid $(docker inspect -f {{.State.Pid}} web)"'
step "done"
