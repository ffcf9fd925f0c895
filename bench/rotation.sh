#!/usr/bin/env bash
# Benchmark: what a client sees during server-certificate rotations. This design (systemd holds
# the TCP socket in docker-tcp.socket; only docker.service restarts) against the common one
# (`-H tcp://0.0.0.0:2376 --tlsverify ...` in ExecStart), same machine, same run, same client:
# bench/poller.py polling GET /_ping every 50 ms over mutual TLS.
#   sudo bash bench/rotation.sh [ROTATIONS]   (default 5)
set -euo pipefail
ROTATIONS=${1:-5}
cd "$(dirname "$0")/.."
M=tests/machine/machine.sh
NAME=dtm-rot-$$
trap 'bash "$M" down "$NAME" >/dev/null 2>&1 || true' EXIT
cargo build --release --quiet
bash "$M" up "$NAME" >/dev/null
R=$(bash "$M" root "$NAME")
cp target/release/docker-tls-manager "$R/usr/local/bin/"
cp bench/poller.py "$R/root/poller.py"
in_m() { DTM_MACHINE_QUIET=1 bash "$M" exec "$NAME" bash -c "$*"; }
C=/var/lib/docker-tls-manager/clients/admin

in_m "DTM_LOG=warn docker-tls-manager apply >/dev/null"
in_m "docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000 >/dev/null"
echo "socket unit (this design): $ROTATIONS x docker-tls-manager renew --force server"
ours=$(in_m "rm -f /tmp/stop; (python3 /root/poller.py $C 127.0.0.1:2376 /tmp/stop > /tmp/ours.txt &) ; sleep 1
  for i in \$(seq $ROTATIONS); do DTM_LOG=warn docker-tls-manager renew --force server >/dev/null; sleep 2; done
  touch /tmp/stop; sleep 1.5; cat /tmp/ours.txt")
echo "  $ours"

# The common design: TLS flags and a tcp:// host in ExecStart, no socket unit.
in_m "DTM_LOG=warn docker-tls-manager deconfigure >/dev/null
  mkdir -p /etc/systemd/system/docker.service.d
  printf '[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// -H tcp://0.0.0.0:2376 --tlsverify --tlscacert=/etc/docker/tls/ca.pem --tlscert=/etc/docker/tls/server-cert.pem --tlskey=/etc/docker/tls/server-key.pem --containerd=/run/containerd/containerd.sock\n' > /etc/systemd/system/docker.service.d/tcp.conf
  echo '{\"live-restore\": true}' > /etc/docker/daemon.json
  systemctl daemon-reload; systemctl reset-failed docker; systemctl restart docker; sleep 1"
echo "-H tcp:// in ExecStart (common design): $ROTATIONS x systemctl restart docker"
theirs=$(in_m "rm -f /tmp/stop; (python3 /root/poller.py $C 127.0.0.1:2376 /tmp/stop > /tmp/theirs.txt &) ; sleep 1
  for i in \$(seq $ROTATIONS); do systemctl reset-failed docker; systemctl restart docker; sleep 2; done
  touch /tmp/stop; sleep 1.5; cat /tmp/theirs.txt")
echo "  $theirs"
echo "container c1 still running: $(in_m "docker inspect -f '{{.State.Running}}' c1")"
