//! Docker's authorization plugin served by us (issue 11), against the real dockerd, the docker
//! CLI and docker-py in a throwaway systemd machine: revocation, roles, audit, another plugin
//! kept, and availability (the plugin killed, stopped, rate-limited, its binary removed:
//! Docker never waits for it).

mod common;

use common::machine::Machine;
use common::text;
use std::time::{Duration, Instant};

const STATE: &str = "/var/lib/docker-tls-manager";
const DENIED: &str = "authorization denied by plugin docker-tls-manager";

/// The docker CLI over TLS with client `name`'s files (or any directory holding a bundle).
fn tls(dir: &str) -> String {
    format!(
        "DOCKER_HOST=tcp://127.0.0.1:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir} timeout 20 docker"
    )
}

fn client(name: &str) -> String {
    tls(&format!("{STATE}/clients/{name}"))
}

/// Runs `cmd`; asserts it was refused by our plugin and returns the message.
fn denied(m: &Machine, cmd: &str) -> String {
    let o = m.sh(cmd);
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains(DENIED),
        "`{cmd}` was not refused by the plugin ({}):\n{}\n{err}",
        o.status,
        text(&o.stdout)
    );
    err
}

/// N requests straight to the plugin's socket, pipelined 200 at a time, each over "TLS" with a
/// certificate that is not one: each is refused with a warning line.
const FLOOD: &str = r#"
import json, socket, sys, time
n = int(sys.argv[1])
body = json.dumps({"User": "flood", "UserAuthNMethod": "TLS", "RequestMethod": "GET",
    "RequestUri": "/flood", "RequestPeerCertificates": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}).encode()
req = b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n\r\n" % len(body) + body
s = socket.socket(socket.AF_UNIX)
s.connect("/run/docker/plugins/docker-tls-manager.sock")
f = s.makefile("rb")
t0, refused, done = time.time(), 0, 0
while done < n:
    k = min(200, n - done)
    s.sendall(req * k)
    for _ in range(k):
        length = 0
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b""):
                break
        if b'"Allow":false' in f.read(length):
            refused += 1
    done += k
print(f"{done} sent, {refused} refused in {time.time() - t0:.1f}s")
assert refused == n
"#;

fn in_daemon_json(m: &Machine) -> bool {
    m.sh("grep -q '\"docker-tls-manager\"' /etc/docker/daemon.json")
        .status
        .success()
}

/// A second authorization plugin, in Python on its own unix socket: refuses `docker volume ls`
/// (GET /volumes), allows the rest, and counts the requests it is asked about.
const OTHER_PLUGIN: &str = r#"
import json, os, socketserver
from http.server import BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/Plugin.Activate":
            out = {"Implements": ["authz"]}
        elif self.path == "/AuthZPlugin.AuthZReq":
            req = json.loads(body or b"{}")
            with open("/tmp/other.log", "a") as f:
                f.write(req.get("RequestMethod", "") + " " + req.get("RequestUri", "") + "\n")
            uri = req.get("RequestUri", "")
            out = {"Allow": "/volumes" not in uri, "Msg": "the other plugin says no"}
        else:
            out = {"Allow": True}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
p = "/run/docker/plugins/other.sock"
os.makedirs("/run/docker/plugins", exist_ok=True)
if os.path.exists(p): os.unlink(p)
S(p, H).serve_forever()
"#;

#[test]
fn revocation_roles_audit_and_another_plugin_kept() {
    let m = Machine::up("authz");
    // Another plugin already configured, with the admin's own key order.
    std::fs::write(m.root.join("usr/local/bin/other-authz.py"), OTHER_PLUGIN).unwrap();
    std::fs::write(
        m.root.join("etc/systemd/system/other-authz.service"),
        "[Unit]\nBefore=docker.service\n[Service]\nExecStart=/usr/bin/python3 /usr/local/bin/other-authz.py\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    m.ok("systemctl daemon-reload && systemctl enable --now other-authz && mkdir -p /var/lib/prometheus/node-exporter");
    m.wait_for(
        "test -S /run/docker/plugins/other.sock",
        Duration::from_secs(10),
    );
    m.ok(r#"printf '{"log-level": "info", "authorization-plugins": ["other"]}\n' > /etc/docker/daemon.json && systemctl reload docker"#);
    // Mutual TLS first, without the plugin; then the plugin on: a reload, no restart.
    m.ok("mkdir -p /etc/docker-tls-manager && printf '[authz]\\nenabled = false\\n' > /etc/docker-tls-manager/config.toml && docker-tls-manager apply");
    let docker_pid = m.main_pid();
    m.ok("rm /etc/docker-tls-manager/config.toml && docker-tls-manager apply");
    assert_eq!(m.main_pid(), docker_pid, "only reloads for the plugin list");
    let list = m.ok("python3 -c 'import json; print(json.load(open(\"/etc/docker/daemon.json\"))[\"authorization-plugins\"])'");
    assert_eq!(list.trim(), "['other', 'docker-tls-manager']");
    for (name, role) in [
        ("ops", "operator"),
        ("mon", "monitoring"),
        ("gone", "admin"),
    ] {
        m.ok(&format!(
            "docker-tls-manager client add {name} --role {role}"
        ));
    }
    let listed = m.ok("docker-tls-manager client list");
    assert!(listed.contains("mon\tadded\trole monitoring"), "{listed}");
    assert!(listed.contains("ops\tadded\trole operator"), "{listed}");
    m.ok("docker run -d --network none --name c1 dtm-busybox /bin/sleep 100000");
    m.ok("docker run -d --network none --name c2 dtm-busybox /bin/sleep 100000");

    // The other plugin is still consulted (it refuses volume listing, for everyone).
    let o = m.sh("timeout 20 docker volume ls");
    assert!(
        text(&o.stderr).contains("the other plugin says no"),
        "{o:?}"
    );
    m.ok("timeout 5 docker ps");
    assert!(m.ok("cat /tmp/other.log").contains("/containers/json"));

    // Admin: everything (and the probe keeps verifying apply).
    let admin = client("admin");
    m.ok(&format!(
        "{admin} ps && {admin} exec c1 true && {admin} logs c1"
    ));

    // Monitoring: list and inspect, nothing else.
    let mon = client("mon");
    m.ok(&format!(
        "{mon} ps -a && {mon} inspect c1 >/dev/null && {mon} images && {mon} network ls && {mon} version && {mon} info >/dev/null"
    ));
    m.ok(&format!(
        "{mon} events --since 0 --until \"$(date +%s)\" >/dev/null"
    ));
    for cmd in [
        "run --rm --network none dtm-busybox true",
        "exec c1 true",
        "cp c1:/etc/hostname /tmp/x",
        "logs c1",
        "export -o /tmp/c1.tar c1",
        "rm -f c2",
        "save -o /tmp/img.tar dtm-busybox",
        "stop c2",
        "top c1",
    ] {
        let msg = denied(&m, &format!("{mon} {cmd}"));
        assert!(msg.contains("role monitoring does not allow"), "{msg}");
    }
    // attach upgrades the connection: the CLI shows only the status of the refusal.
    let o = m.sh(&format!("{mon} attach --no-stdin c1"));
    assert!(
        !o.status.success() && text(&o.stderr).contains("received 403"),
        "{o:?}"
    );
    // Operator: the life cycle of existing containers, no more.
    let ops = client("ops");
    m.ok(&format!(
        "{ops} stop -t 1 c2 && {ops} start c2 && {ops} restart -t 1 c2 && {ops} ps"
    ));
    for cmd in [
        "run --rm --network none dtm-busybox true",
        "exec c1 true",
        "logs c1",
        "rm -f c2",
        "cp c1:/etc/hostname /tmp/x",
    ] {
        denied(&m, &format!("{ops} {cmd}"));
    }
    // docker-py, an independent client: the same answers.
    let py = m.ok(&format!(
        r#"python3 - <<'EOF'
import docker
def c(name):
    d = "{STATE}/clients/" + name
    tls = docker.tls.TLSConfig(client_cert=(d + "/cert.pem", d + "/key.pem"), ca_cert=d + "/ca.pem", verify=True)
    return docker.DockerClient(base_url="tcp://127.0.0.1:2376", tls=tls)
mon = c("mon")
print("list", len(mon.containers.list()))
try:
    mon.containers.get("c1").logs()
    print("logs allowed")
except docker.errors.APIError as e:
    print("logs", e.status_code, "docker-tls-manager" in str(e))
try:
    mon.containers.get("c1").exec_run("true")
    print("exec allowed")
except docker.errors.APIError as e:
    print("exec", e.status_code)
EOF"#
    ));
    assert!(py.contains("list 2"), "{py}");
    assert!(py.contains("logs 403 True"), "{py}");
    assert!(py.contains("exec 403"), "{py}");

    // Audit: each TLS request with its fields, denials at warning; the unix socket not above debug.
    m.wait_for(
        "journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=mon DECISION=deny METHOD=POST | grep -q '/containers/c1/exec'",
        Duration::from_secs(5),
    );
    let deny = m.ok("journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=mon DECISION=deny METHOD=POST");
    assert!(
        // (The docker CLI names its API version: 1.41 on Debian 12, 1.45 on Debian 13.)
        deny.lines().any(|l| l.contains("\"PATH\":\"/v1.")
            && l.contains("/containers/c1/exec\"")
            && l.contains("\"PRIORITY\":\"4\"")
            && l.contains("\"SERIAL\":\"")
            && l.contains("\"REASON\":\"client 'mon': role monitoring does not allow POST /containers/c1/exec\"")),
        "{deny}"
    );
    let allow =
        m.ok("journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=ops DECISION=allow");
    assert!(
        allow
            .lines()
            .any(|l| l.contains("/stop") && l.contains("\"PRIORITY\":\"5\"")),
        "{allow}"
    );
    let all = m.ok("journalctl -u docker-tls-manager-authz --no-pager -o json");
    assert!(
        !all.contains("local unix socket"),
        "unix-socket requests logged above debug"
    );

    // Revocation: the next request is refused, others unaffected, no Docker restart.
    m.ok("cp -r /var/lib/docker-tls-manager/clients/gone /root/gone-old");
    let old = tls("/root/gone-old");
    m.ok(&format!("{old} ps"));
    let out = m.ok("docker-tls-manager client revoke gone");
    assert!(out.contains("revoked certificate of 'gone'"), "{out}");
    let t0 = Instant::now();
    let msg = denied(&m, &format!("{old} ps"));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(msg.contains("is revoked"), "{msg}");
    eprintln!("revoked: refused in {:?}: {}", t0.elapsed(), msg.trim());
    m.ok(&format!("{admin} ps && {mon} ps"));
    // The name goes on with its new certificate.
    m.ok(&format!("{} ps", client("gone")));
    // Removed, then added again: a new certificate that works; the old one stays refused.
    m.ok("cp -r /var/lib/docker-tls-manager/clients/gone /root/gone-second");
    m.ok("docker-tls-manager client remove gone");
    denied(&m, &format!("{} ps", tls("/root/gone-second")));
    m.ok("docker-tls-manager client add gone");
    m.ok(&format!("{} ps", client("gone")));
    denied(&m, &format!("{old} ps"));
    let listed = m.ok("docker-tls-manager client list");
    assert_eq!(
        listed.matches("gone\trevoked").count(),
        2,
        "both certificates listed as revoked:\n{listed}"
    );
    assert_eq!(
        m.ok(&format!("stat -c %a {STATE}/authz/revoked.json"))
            .trim(),
        "600"
    );
    let status = m.ok("docker-tls-manager status");
    assert_eq!(
        status.matches("revoked: gone serial").count(),
        2,
        "{status}"
    );
    let status = m.ok("docker-tls-manager status --json");
    assert!(status.contains("\"revoked\": ["), "{status}");
    assert_eq!(m.main_pid(), docker_pid, "Docker restarted");

    // Metrics: counters by client and decision.
    m.wait_for(
        "grep -q 'docker_tls_manager_authz_requests_total{client=\"mon\",decision=\"deny\"}' /var/lib/prometheus/node-exporter/docker-tls-manager-authz.prom",
        Duration::from_secs(15),
    );

    // The manager's probe identity: its ping (apply verifies with it), nothing else; audited.
    let probe = tls(&format!("{STATE}/probe"));
    m.ok(&format!(
        "curl -sf --cacert {STATE}/probe/ca.pem --cert {STATE}/probe/cert.pem --key {STATE}/probe/key.pem https://localhost:2376/_ping"
    ));
    for cmd in ["ps", "version", "run --rm dtm-busybox true"] {
        let msg = denied(&m, &format!("{probe} {cmd}"));
        assert!(msg.contains("probe identity may only ping"), "{msg}");
    }
    m.wait_for(
        "journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=docker-tls-manager-probe DECISION=deny | grep -q /containers/json",
        Duration::from_secs(5),
    );
    let j = m.ok("journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=docker-tls-manager-probe DECISION=deny");
    assert!(
        j.contains("probe identity may only ping") && j.contains("/containers/json"),
        "probe denial not audited: {j}"
    );

    // A corrupt list refuses TLS (fail closed), never the unix socket; the probe still passes.
    m.ok(&format!("cp {STATE}/authz/revoked.json /root/revoked.json"));
    m.ok(&format!("echo '{{garbage' > {STATE}/authz/revoked.json"));
    let msg = denied(&m, &format!("{admin} ps"));
    assert!(msg.contains("unreadable"), "{msg}");
    eprintln!("corrupt list: {}", msg.trim());
    m.ok("timeout 5 docker ps");
    m.ok("docker-tls-manager apply");
    m.ok(&format!("cp /root/revoked.json {STATE}/authz/revoked.json"));
    m.ok(&format!("{admin} ps"));

    // A flood of refused requests (journald's default rate limit lets some 10,000 lines of a
    // unit through in 30 s, scaled up with the free disk space: about 37,000 here, and drops
    // the rest): every line is in the journal, and the lines after it too.
    std::fs::write(m.root.join("root/flood.py"), FLOOD).unwrap();
    let flooded = m.ok("python3 /root/flood.py 150000");
    eprintln!("audit flood: {}", flooded.trim());
    m.ok(&format!(
        "{ops} inspect dtm-after-the-flood >/dev/null 2>&1; true"
    ));
    m.wait_for(
        "journalctl -u docker-tls-manager-authz --no-pager -o json CLIENT=ops | grep -q 'dtm-after-the-flood'",
        Duration::from_secs(30),
    );
    let lines =
        m.ok("journalctl -u docker-tls-manager-authz --no-pager -o cat PATH=/flood | wc -l");
    assert_eq!(
        lines.trim(),
        "150000",
        "journald dropped audit lines of the flood"
    );
    // journald stopped: requests over TLS wait for their audit lines (a flood to the plugin
    // fills journald's queue, then waits); the unix socket, not logged above debug, does not.
    let journald = m.ok("systemctl show -p MainPID --value systemd-journald");
    let journald = journald.trim();
    m.ok(&format!("kill -STOP {journald}"));
    m.ok("rm -f /tmp/flood2.out; setsid -f sh -c 'python3 /root/flood.py 5000 > /tmp/flood2.out 2>&1' < /dev/null > /dev/null 2>&1");
    std::thread::sleep(Duration::from_secs(2));
    let held = m.sh("test -s /tmp/flood2.out").status.success();
    let unix = m.sh("timeout 3 docker ps");
    m.ok(&format!("kill -CONT {journald}"));
    assert!(
        unix.status.success(),
        "the unix socket waited for journald: {unix:?}"
    );
    assert!(
        !held,
        "the flood finished while journald was stopped: audit lines skipped?"
    );
    m.wait_for(
        "grep -q '5000 sent, 5000 refused' /tmp/flood2.out",
        Duration::from_secs(30),
    );

    // Survives a power loss and a cold boot, with nothing of ours run by hand.
    m.power_fail_and_boot().unwrap();
    eprintln!("booted again after a power loss");
    m.wait_for(&format!("{admin} ps"), Duration::from_secs(30));
    denied(&m, &format!("{old} ps"));
    denied(&m, &format!("{} ps", tls("/root/gone-second")));
    m.ok(&format!("{} ps", client("gone")));
    denied(&m, &format!("{mon} exec c1 true"));
    m.ok("timeout 5 docker ps");

    // deconfigure: our entry out, the other plugin kept (and still consulted), Docker works.
    m.ok("docker-tls-manager deconfigure");
    let list = m.ok("python3 -c 'import json; print(json.load(open(\"/etc/docker/daemon.json\"))[\"authorization-plugins\"])'");
    assert_eq!(list.trim(), "['other']");
    m.ok("timeout 5 docker ps && timeout 20 docker run --rm --network none dtm-busybox true");
    assert!(text(&m.sh("timeout 5 docker volume ls").stderr).contains("the other plugin says no"));
    assert!(
        !m.root
            .join("etc/systemd/system/docker-tls-manager-authz.socket")
            .exists()
    );
    assert!(
        !m.sh("test -S /run/docker/plugins/docker-tls-manager.sock")
            .status
            .success()
    );
}

/// docker-py streams of `n` requests over TLS and over the unix socket at once; prints
/// "tls OK FAILED" and "unix OK FAILED" with the first errors.
const STREAM: &str = r#"
import docker, sys, threading, collections
n = int(sys.argv[1])
d = "/var/lib/docker-tls-manager/clients/admin"
tls = docker.tls.TLSConfig(client_cert=(d + "/cert.pem", d + "/key.pem"), ca_cert=d + "/ca.pem", verify=True)
clients = {"tls": docker.APIClient(base_url="tcp://127.0.0.1:2376", tls=tls, timeout=60),
           "unix": docker.APIClient(base_url="unix:///run/docker.sock", timeout=60)}
res = {}
def run(name):
    ok = fail = 0
    errs = collections.Counter()
    for i in range(n):
        try:
            clients[name].containers(all=True) if i % 2 else clients[name].ping()
            ok += 1
        except Exception as e:
            fail += 1
            errs[str(e)[-160:]] += 1
    res[name] = (ok, fail, dict(errs))
open("/tmp/stream-started", "w").close()
ts = [threading.Thread(target=run, args=(k,)) for k in clients]
for t in ts: t.start()
for t in ts: t.join()
for k, (ok, fail, errs) in res.items():
    print(k, ok, fail, errs)
"#;

/// In place of our binary: `authz serve` dies of SIGABRT (as a panic does in the release
/// build, `panic = "abort"`) while /etc/dtm-fail exists, after waiting for /etc/dtm-fail-once
/// to go; anything else runs the real binary.
const FAILING: &str = r#"#!/bin/sh
if [ "$1 $2" = "authz serve" ] && [ -e /etc/dtm-fail ]; then
  echo "dtm-test: failing" >&2
  while [ -e /etc/dtm-fail-once ]; do sleep 0.1; done
  kill -ABRT $$
fi
exec /usr/local/bin/dtm-real "$@"
"#;

#[test]
fn the_plugin_killed_stopped_rate_limited_or_removed_never_blocks_docker() {
    let m = Machine::up("authzav");
    std::fs::write(m.root.join("usr/local/bin/dtm-stream.py"), STREAM).unwrap();
    m.ok("docker-tls-manager apply");
    assert!(in_daemon_json(&m));

    // A plugin started from another unit (an older version's) does not go on running: apply
    // puts the unit back and restarts it.
    let unit = "/etc/systemd/system/docker-tls-manager-authz.service";
    m.ok(&format!("sed -i 's/^UMask=0077$/UMask=0077\\nEnvironment=DTM_OLD_UNIT=1/' {unit} && grep -q DTM_OLD_UNIT {unit} && systemctl daemon-reload && systemctl restart docker-tls-manager-authz.service"));
    let plugin = |m: &Machine| {
        let pid = m.ok("systemctl show -p MainPID --value docker-tls-manager-authz.service");
        let old = m
            .sh(&format!(
                "tr '\\0' '\\n' < /proc/{}/environ | grep -q DTM_OLD_UNIT",
                pid.trim()
            ))
            .status
            .success();
        (pid.trim().to_string(), old)
    };
    let (pid, old) = plugin(&m);
    assert!(old, "the plugin does not run from the edited unit");
    let out = m.ok("docker-tls-manager apply 2>&1");
    let (pid2, old) = plugin(&m);
    assert!(
        pid2 != pid && pid2 != "0" && !old,
        "the plugin still runs from the old unit ({pid} -> {pid2}): {out}"
    );
    m.ok(&format!("{} ps >/dev/null", client("admin")));

    // SIGKILL of the plugin during 500 requests over TLS and 500 over the unix socket: 0 failed.
    m.ok("rm -f /tmp/stream-started /tmp/stream-done; systemd-run --unit dtm-stream --collect bash -c 'python3 /usr/local/bin/dtm-stream.py 500 > /tmp/stream.out 2>&1; touch /tmp/stream-done'");
    m.wait_for("test -e /tmp/stream-started", Duration::from_secs(20));
    let kills = m.ok(
        "k=0; while [ ! -e /tmp/stream-done ]; do p=$(systemctl show -p MainPID --value docker-tls-manager-authz.service); \
         if [ \"$p\" != 0 ] && kill -KILL $p 2>/dev/null; then k=$((k+1)); fi; sleep 0.1; done; echo $k",
    );
    let kills: u32 = kills.trim().parse().unwrap();
    let out = m.ok("cat /tmp/stream.out");
    eprintln!("{kills} kills of the plugin; {out}");
    assert!(kills >= 5, "too few kills landed: {kills}");
    for l in ["tls 500 0 {}", "unix 500 0 {}"] {
        assert!(
            out.contains(l),
            "requests failed while the plugin was killed: {out}"
        );
    }
    assert!(in_daemon_json(&m), "a kill took the plugin out");

    // One failure of its own (an exit code, as a panic gives): restarted, and Docker still
    // asks it: a crash an attacker provokes does not turn revocation off.
    m.ok("cp -r /var/lib/docker-tls-manager/clients/admin /root/rv && docker-tls-manager client revoke admin");
    denied(&m, &format!("{} ps", tls("/root/rv")));
    std::fs::write(m.root.join("usr/local/bin/dtm-failing"), FAILING).unwrap();
    m.ok("chmod 755 /usr/local/bin/dtm-failing && mv /usr/local/bin/docker-tls-manager /usr/local/bin/dtm-real && mv /usr/local/bin/dtm-failing /usr/local/bin/docker-tls-manager");
    // Four failures counted earlier: three older than the 30 s window (not counted), one 15 s
    // old (counted).
    m.ok("u=$(cut -d. -f1 /proc/uptime); printf '%s\\n' $((u-40)) $((u-35)) $((u-31)) $((u-15)) > /run/docker-tls-manager-authz/failures");
    m.ok("touch /etc/dtm-fail /etc/dtm-fail-once && systemctl restart docker-tls-manager-authz.service");
    m.wait_for(
        "journalctl -u docker-tls-manager-authz.service -o cat | grep -q 'dtm-test: failing'",
        Duration::from_secs(10),
    );
    m.ok("rm /etc/dtm-fail /etc/dtm-fail-once");
    m.wait_for(
        "journalctl -u docker-tls-manager-authz.service -o cat | grep -q 'status=6/ABRT'",
        Duration::from_secs(10),
    );
    m.wait_for(
        "systemctl is-active -q docker-tls-manager-authz.service",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(in_daemon_json(&m), "one failure took the plugin out");
    assert!(
        m.sh("journalctl -u docker-tls-manager-authz.service -o cat | grep -E 'failed \\((signal|core-dump)\\), 2 of 5 within 30 s: restarted'")
            .status
            .success(),
        "one abort within 30 s of another was not counted as the second of 5 (three older ones not counted)"
    );
    let pid_after =
        |m: &Machine| m.ok("systemctl show -p MainPID --value docker-tls-manager-authz.service");
    m.ok(&format!("{} ps >/dev/null", client("admin")));
    assert_ne!(pid_after(&m).trim(), "0");
    denied(&m, &format!("{} ps", tls("/root/rv")));
    std::thread::sleep(Duration::from_secs(1));
    assert!(in_daemon_json(&m), "one failure took the plugin out");
    denied(&m, &format!("{} ps", tls("/root/rv")));
    // Failing at every start: the fifth failure within 30 s runs the fallback, and Docker
    // answers over the unix socket at once.
    let docker_pid = m.main_pid();
    m.ok("touch /etc/dtm-fail && systemctl restart docker-tls-manager-authz.service");
    m.wait_for(
        "! grep -q docker-tls-manager /etc/docker/daemon.json",
        Duration::from_secs(10),
    );
    let j = m.ok("journalctl -u docker-tls-manager-authz.service -o cat");
    assert!(
        j.contains("5 times within 30 s: Docker stops asking it"),
        "{j}"
    );
    m.ok("timeout 1 docker ps >/dev/null");
    assert_eq!(m.main_pid(), docker_pid, "Docker restarted");
    m.ok("rm /etc/dtm-fail && mv -f /usr/local/bin/dtm-real /usr/local/bin/docker-tls-manager && docker-tls-manager apply");
    assert!(in_daemon_json(&m));
    m.ok(&format!("{} ps >/dev/null", client("admin")));

    // The service stopped: the socket starts it again on the next request.
    let t0 = Instant::now();
    m.ok("docker ps >/dev/null && systemctl stop docker-tls-manager-authz.service");
    // dockerd's idle kept-alive connections do not hold the stop up.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    m.ok("timeout 1 docker ps >/dev/null");
    m.ok(&format!("{} ps >/dev/null", client("admin")));
    eprintln!("service stopped: docker ps in {:?}", t0.elapsed());
    assert!(in_daemon_json(&m));

    // The socket stopped by hand: the fallback takes our entry out (reload, no restart).
    let docker_pid = m.main_pid();
    m.ok("systemctl stop docker-tls-manager-authz.socket");
    m.wait_for(
        "! grep -q docker-tls-manager /etc/docker/daemon.json",
        Duration::from_secs(5),
    );
    m.ok("timeout 1 docker ps >/dev/null");
    assert_eq!(m.main_pid(), docker_pid);
    // `status` and `check` say what dockerd consults, not what the configuration asks.
    let st = m.ok("docker-tls-manager status");
    assert!(
        st.contains("authorization plugin: configured but dockerd does not consult it"),
        "{st}"
    );
    let o = m.sh("docker-tls-manager check");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        text(&o.stdout)
            .contains("error: authorization plugin configured but dockerd does not consult it"),
        "{o:?}"
    );
    m.ok("docker-tls-manager apply");
    assert!(in_daemon_json(&m));
    // (apply waits until dockerd, which reloads just after the SIGHUP returns, consults it)
    let st = m.ok("docker-tls-manager status");
    assert!(
        st.contains("authorization plugin: on (dockerd consults it)"),
        "{st}"
    );
    assert!(
        m.ok("docker-tls-manager check")
            .contains("ok: authorization plugin on (dockerd consults it)")
    );

    // Its start limit hit (an admin's drop-in): the socket fails, the fallback runs.
    m.ok("mkdir -p /etc/systemd/system/docker-tls-manager-authz.service.d && printf '[Unit]\\nStartLimitIntervalSec=60\\nStartLimitBurst=2\\n' > /etc/systemd/system/docker-tls-manager-authz.service.d/limit.conf && systemctl daemon-reload");
    m.ok("for i in 1 2 3 4; do timeout 5 docker ps >/dev/null; systemctl kill -s KILL docker-tls-manager-authz.service; sleep 0.4; done");
    m.wait_for(
        "! grep -q docker-tls-manager /etc/docker/daemon.json",
        Duration::from_secs(5),
    );
    let t0 = Instant::now();
    m.ok("timeout 1 docker ps >/dev/null");
    eprintln!("start limit hit: docker ps in {:?}", t0.elapsed());
    m.ok("rm -r /etc/systemd/system/docker-tls-manager-authz.service.d && systemctl daemon-reload");
    m.ok("docker-tls-manager apply");
    assert!(in_daemon_json(&m));
    m.ok(&format!("{} ps >/dev/null", client("admin")));

    // Its binary removed by hand: the plugin dies at its next restart, the socket stops, the
    // fallback (a shell script, no binary of ours) takes our entry out.
    m.ok("mv /usr/local/bin/docker-tls-manager /root/dtm && systemctl kill -s KILL docker-tls-manager-authz.service");
    m.wait_for(
        "! grep -q docker-tls-manager /etc/docker/daemon.json",
        Duration::from_secs(5),
    );
    let t0 = Instant::now();
    m.ok("timeout 1 docker ps >/dev/null");
    eprintln!("binary removed: docker ps in {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(
        m.ok("systemctl is-active docker-tls-manager-authz.service || true")
            .trim(),
        "activating",
        "still restarting without a binary"
    );
    m.ok("mv /root/dtm /usr/local/bin/docker-tls-manager && docker-tls-manager apply");
    assert!(in_daemon_json(&m));

    // The admin edited daemon.json since we wrote it, then the plugin went: left as it is.
    m.ok(r#"python3 -c '
import json; p="/etc/docker/daemon.json"; d=json.load(open(p)); d["log-level"]="warn"; open(p,"w").write(json.dumps(d))'"#);
    // The plugin now fails at every start (a broken drop-in): the fallback runs, and leaves
    // the admin's file alone.
    m.ok("mkdir -p /etc/systemd/system/docker-tls-manager-authz.service.d && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > /etc/systemd/system/docker-tls-manager-authz.service.d/broken.conf && systemctl daemon-reload && systemctl restart docker-tls-manager-authz.service");
    // (at its fifth failure within 30 s)
    m.wait_for(
        "journalctl -u docker-tls-manager-authz-fallback --no-pager -o cat | grep -q 'left as it is'",
        Duration::from_secs(10),
    );
    assert!(in_daemon_json(&m), "the admin's daemon.json was replaced");
    // The service (or apply) sees the plugin not answering and takes our entry out itself.
    let o = m.sh("docker-tls-manager apply");
    assert!(!o.status.success(), "apply passed with the plugin failing");
    assert!(text(&o.stderr).contains("does not answer"), "{o:?}");
    assert!(!in_daemon_json(&m));
    assert!(
        m.ok("cat /etc/docker/daemon.json")
            .contains("\"log-level\": \"warn\""),
        "the admin's edit was lost"
    );
    m.ok("timeout 1 docker ps >/dev/null");
    m.ok("rm -r /etc/systemd/system/docker-tls-manager-authz.service.d && systemctl daemon-reload && docker-tls-manager apply");
    assert!(in_daemon_json(&m));

    // Docker stopped by the admin (its TCP socket still listening): `status` and `check` ask
    // systemd, not the TLS port, which would start Docker again.
    m.ok("systemctl stop docker.service");
    let _ = m.sh("docker-tls-manager status; docker-tls-manager check");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        m.ok("systemctl is-active docker.service || true").trim(),
        "inactive",
        "status or check started the Docker the admin stopped"
    );
    m.ok("systemctl start docker.service");

    // [authz] enabled = false: entry out by a reload, units gone, TLS clients unrestricted.
    let docker_pid = m.main_pid();
    m.ok("mkdir -p /etc/docker-tls-manager && printf '[authz]\\nenabled = false\\n' > /etc/docker-tls-manager/config.toml && docker-tls-manager apply");
    assert!(!in_daemon_json(&m));
    assert!(
        !m.root
            .join("etc/systemd/system/docker-tls-manager-authz.service")
            .exists()
    );
    assert_eq!(m.main_pid(), docker_pid, "Docker restarted");
    m.ok(&format!(
        "{} ps >/dev/null && timeout 5 docker ps >/dev/null",
        client("admin")
    ));
}
