//! Crash trials in a real systemd + dockerd machine: `apply` on a stock host, `renew --force
//! server` and `deconfigure` on a configured one, each killed with SIGKILL at every write
//! boundary (the N-th rename or unlink, through strace's fault injection: the atomic-write
//! helper renames a temp file over its target, so the N-th rename is the N-th file written)
//! and as each systemd/D-Bus step begins (after the previous job ended). After each kill:
//!   (a) at once: plain HTTP on 2376 never answers OK; a live-restore container kept its PID;
//!   (b) `systemctl restart docker` (someone restarts Docker with whatever is on disk): plain
//!       never OK, docker active, port closed or mutual TLS, the container kept if dockerd had
//!       live-restore on;
//!   (c) power loss + cold boot with nothing of ours run by hand (`machine.sh powerfail`,
//!       `boot`): docker active, port closed or mutual TLS, never plain;
//!   (d) `apply` converges: mutual TLS with the certificate on disk, no temp file left.
//! The power loss keeps unsynced writes (the overlay's upper dir is on the host's file system,
//! whose kernel keeps running): durability is the atomic-write helper's fsyncs' business.

mod common;

use common::machine::{CLIENT, Machine};
use common::text;

/// A container that must outlive every kill while dockerd has live-restore on. Its PID is read
/// from /proc, without asking dockerd (which may be stopped right after a kill).
/// (PID 1 of the container ends on SIGTERM: a restart without live-restore takes no 10 s.)
const CONTAINER: &str = r#"docker rm -f c1 >/dev/null 2>&1; docker run -d --network none --name c1 dtm-busybox /bin/sh -c 'trap "exit 0" TERM; /bin/sleep 4242424 & wait' >/dev/null"#;
const CONTAINER_PID: &str =
    "for p in $(pgrep -x sleep); do grep -qa 4242424 /proc/$p/cmdline && echo $p; done; true";

/// What port 2376 does: `plain=<body>` for plain HTTP, and `port=closed|tls|other:<rc>`.
const PORT_STATE: &str = r#"C=/var/lib/docker-tls-manager/clients/admin
plain=$(curl -s --max-time 10 http://127.0.0.1:2376/_ping 2>/dev/null)
echo "plain=$plain"
if ! timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2376' 2>/dev/null; then echo port=closed
else
  t=$(curl -s --max-time 20 --cacert $C/ca.pem --cert $C/cert.pem --key $C/key.pem https://127.0.0.1:2376/_ping 2>/dev/null); rc=$?
  if [ "$t" = OK ]; then echo port=tls; else echo "port=other:$rc"; fi
fi
echo "docker=$(systemctl is-active docker.service)"
echo "socket=$(systemctl is-active docker-tcp.socket)""#;

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// SIGKILL on entering the N-th call of this system call.
    Syscall(&'static str, u32),
    /// SIGKILL when the N-th non-file step (a systemd job, a reload, a wait, a verification)
    /// is logged as beginning: the job before it has ended.
    Step(u32),
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kill::Syscall(s, n) => write!(f, "{s} #{n}"),
            Kill::Step(n) => write!(f, "the start of systemd/D-Bus step #{n}"),
        }
    }
}

struct Trial<'a> {
    m: &'a Machine,
    cmd: &'a str,
    kill: Kill,
    /// Broken promises found so far (the sweep goes on, to show every one).
    problems: std::cell::RefCell<Vec<String>>,
}

impl Trial<'_> {
    fn fail(&self, msg: String) {
        eprintln!("BROKEN: {msg}");
        self.problems.borrow_mut().push(msg);
    }

    fn what(&self) -> String {
        format!("`docker-tls-manager {}` killed at {}", self.cmd, self.kill)
    }

    /// Runs the command with the kill armed; true if it was killed, false if it completed.
    fn run(&self) -> bool {
        let script = match self.kill {
            Kill::Syscall(sys, n) => format!(
                "strace -f -o /dev/null -e trace={sys} -e inject={sys}:signal=KILL:when={n} \
                 docker-tls-manager {} >/tmp/crash-out 2>&1; echo rc=$?",
                self.cmd
            ),
            // The log line of a step is written as it begins; the reader kills on the N-th
            // one that is not a file write or removal (those are covered by the syscalls).
            Kill::Step(n) => format!(
                r#"rm -f /tmp/crash-fifo /tmp/crash-err; mkfifo /tmp/crash-fifo
                NO_COLOR=1 docker-tls-manager {} 2>/tmp/crash-fifo >/tmp/crash-out & p=$!
                i=0
                while IFS= read -r l; do
                  echo "$l" >>/tmp/crash-err
                  case $l in
                    *" docker step=write "*|*" docker step=remove "*) ;;
                    *" docker step="*) i=$((i + 1)); [ $i = {n} ] && kill -9 $p ;;
                  esac
                done </tmp/crash-fifo
                wait $p; echo rc=$?"#,
                self.cmd
            ),
        };
        let out = self.m.ok(&script);
        match out.trim().rsplit("rc=").next() {
            Some("137") => true,
            Some("0") => false,
            _ => panic!(
                "{}: neither killed nor successful: {out}\n{}",
                self.what(),
                self.m
                    .ok("cat /tmp/crash-out /tmp/crash-err 2>/dev/null; true")
            ),
        }
    }

    fn port(&self, when: &str) -> (String, String) {
        let s = self.m.ok(PORT_STATE);
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .to_string()
        };
        if get("plain=").trim() == "OK" {
            self.fail(format!(
                "PLAIN HTTP SERVED on 2376: {} ({when}): {s}\n{}",
                self.what(),
                self.m.ok("systemctl cat docker-tcp.socket docker.service 2>&1; cat /etc/docker/daemon.json 2>&1; true")
            ));
        }
        (get("port="), s)
    }

    /// Port closed or mutual TLS; docker active.
    fn closed_or_tls(&self, when: &str) {
        let (port, s) = self.port(when);
        if port != "closed" && port != "tls" {
            self.fail(format!(
                "{} ({when}): port 2376 neither closed nor mutual TLS: {s}\n{}",
                self.what(),
                self.m
                    .ok("systemctl status --no-pager docker.service docker-tcp.socket 2>&1 | tail -30; true")
            ));
        }
        if !s.contains("docker=active") {
            self.fail(format!(
                "{} ({when}): docker.service not active: {s}\n{}",
                self.what(),
                self.m.ok("journalctl -b --no-pager -u docker.service | grep -E 'dockerd\\[[0-9]+\\]: (failed|time=.*level=(error|fatal))|Failed' | tail -5; true")
            ));
        }
    }

    fn live_restore(&self) -> bool {
        self.m
            .ok("docker info -f '{{.LiveRestoreEnabled}}' 2>/dev/null; true")
            .trim()
            == "true"
    }

    /// (a) to (d) after a kill.
    fn check_after_kill(&self, pid: &str) {
        // (a) immediately.
        self.port("right after the kill");
        if self.m.ok(CONTAINER_PID) != pid {
            self.fail(format!(
                "{}: the container died (right after the kill)",
                self.what()
            ));
        }
        // (b) someone restarts Docker with whatever is on disk (the start limit is reset:
        // these trials restart Docker far more often than 3 times a minute).
        // Containers outlive a restart when the stopping dockerd has live-restore on and the
        // starting one reads it from daemon.json (deconfigure takes it out on purpose).
        let lr = self.live_restore()
            && self
                .m
                .sh("grep -q '\"live-restore\": true' /etc/docker/daemon.json")
                .status
                .success();
        self.m
            .ok("systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; true");
        let o = self.m.sh("systemctl restart docker.service");
        if !o.status.success() {
            self.fail(format!(
                "{}: `systemctl restart docker` failed: {}",
                self.what(),
                text(&o.stderr).lines().next().unwrap_or("")
            ));
        }
        self.closed_or_tls("after `systemctl restart docker`");
        if lr && self.m.ok(CONTAINER_PID) != pid {
            self.fail(format!(
                "{}: the container died in `systemctl restart docker` with live-restore on",
                self.what()
            ));
        }
        // (c) power loss, cold boot, nothing of ours run by hand.
        if let Err(e) = self.m.power_fail_and_boot() {
            self.fail(format!(
                "{}: after a power loss the machine booted without a working Docker: {}",
                self.what(),
                e.trim()
            ));
        }
        self.closed_or_tls("after power loss and boot");
        // (d) apply converges.
        converged(
            self.m,
            &format!("{} (then power loss, boot, apply)", self.what()),
        );
    }
}

/// `apply` succeeds, Docker serves the certificate on disk over mutual TLS, plain is refused,
/// no temp file is left.
fn converged(m: &Machine, what: &str) {
    m.ok("systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; true");
    let o = m.sh("docker-tls-manager apply");
    assert!(
        o.status.success(),
        "{what}: the next apply failed ({}):\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    let served = m.ok(&format!(
        "{CLIENT} openssl s_client -connect 127.0.0.1:2376 -cert $C/cert.pem -key $C/key.pem -CAfile $C/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    ));
    let disk = m.ok("openssl x509 -in /etc/docker/tls/server-cert.pem -noout -fingerprint -sha256");
    assert!(
        !served.trim().is_empty() && served == disk,
        "{what}: after apply Docker serves '{}', on disk '{}'",
        served.trim(),
        disk.trim()
    );
    let s = m.ok(PORT_STATE);
    assert!(
        s.contains("port=tls") && !s.contains("plain=OK") && s.contains("docker=active"),
        "{what}: after apply: {s}"
    );
    // The backup tree included: a copy cut short there may hold an old key.
    let tmp =
        m.ok("find /etc/docker /var/lib/docker-tls-manager /etc/systemd/system -name '.dtm-tmp-*'");
    assert!(tmp.trim().is_empty(), "{what}: temp files left: {tmp}");
}

/// A running container (made again after a power loss killed it); returns its PID.
fn container(m: &Machine) -> String {
    let pid = m.ok(CONTAINER_PID);
    if !pid.trim().is_empty() {
        return pid;
    }
    m.ok(CONTAINER);
    let pid = m.ok(&format!(
        "for i in $(seq 30); do p=$({CONTAINER_PID}); [ -n \"$p\" ] && break; sleep 0.1; done; echo \"$p\""
    ));
    assert!(
        !pid.trim().is_empty(),
        "no container pid: {}",
        m.ok("docker ps -a; systemctl status --no-pager docker | tail; true")
    );
    m.ok(CONTAINER_PID)
}

/// Back to a stock host: deconfigure, then the certificates and state removed too.
fn to_stock(m: &Machine) {
    m.ok("systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; true");
    m.ok("docker-tls-manager deconfigure >/dev/null 2>&1");
    m.ok("rm -rf /etc/docker/tls /var/lib/docker-tls-manager");
    // deconfigure leaves live-restore on in the running dockerd (a SIGHUP does not switch it
    // off); a stock dockerd has it off, so that apply takes its live-restore path every time
    m.ok("systemctl restart docker.service");
    let s = m.ok(
        "for f in /etc/systemd/system/docker-tcp.socket /etc/systemd/system/docker.service.d/docker-tls-manager.conf /etc/docker/daemon.json; do [ -e $f ] && echo left: $f; done
         echo docker=$(systemctl is-active docker.service); echo lr=$(docker info -f '{{.LiveRestoreEnabled}}')
         timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2376' 2>/dev/null && echo port=open; true",
    );
    assert_eq!(
        s.trim(),
        "docker=active\nlr=false",
        "not back to a stock host after deconfigure: {s}"
    );
}

/// Kills `cmd` at every boundary of each kind in turn, until it completes without a kill.
/// `prepare` puts the machine in the state the command starts from; after each kill the
/// checks run and `apply` converges the machine (so renew/deconfigure need no other prepare).
fn sweep(
    m: &Machine,
    cmd: &str,
    syscalls: &[&'static str],
    prepare: &dyn Fn(&Machine),
) -> Vec<String> {
    let mut report = Vec::new();
    let mut problems = Vec::new();
    let mut kinds: Vec<Box<dyn Fn(u32) -> Kill>> = Vec::new();
    for s in syscalls {
        let s = *s;
        kinds.push(Box::new(move |n| Kill::Syscall(s, n)));
    }
    kinds.push(Box::new(Kill::Step));
    for kind in &kinds {
        let mut n = 1;
        loop {
            prepare(m);
            let pid = container(m);
            let t = Trial {
                m,
                cmd,
                kill: kind(n),
                problems: Default::default(),
            };
            let t0 = std::time::Instant::now();
            if !t.run() {
                report.push(format!("{}: completed, {} kills before", t.what(), n - 1));
                break;
            }
            t.check_after_kill(&pid);
            let p = t.problems.take();
            eprintln!(
                "{}: {} ({:.1} s)",
                t.what(),
                if p.is_empty() {
                    "safe"
                } else {
                    "PROMISE BROKEN"
                },
                t0.elapsed().as_secs_f32()
            );
            problems.extend(p);
            n += 1;
            assert!(n < 60, "{cmd}: more than 60 boundaries of one kind?");
        }
    }
    for r in &report {
        eprintln!("{r}");
    }
    assert!(
        problems.is_empty(),
        "`docker-tls-manager {cmd}`: {} broken promise(s) after kills:\n{}",
        problems.len(),
        problems.join("\n")
    );
    report
}

#[test]
fn crash_at_every_boundary_of_first_apply() {
    let m = Machine::up("crash-apply");
    let configured = std::cell::Cell::new(false);
    let prepare = |m: &Machine| {
        // after the checks, `apply` has configured the machine: back to stock
        if configured.replace(true) {
            to_stock(m);
        }
    };
    let r = sweep(&m, "apply", &["renameat"], &prepare);
    assert!(r.len() == 2, "{r:?}");
}

#[test]
fn crash_at_every_boundary_of_forced_server_renewal() {
    let m = Machine::up("crash-renew");
    m.ok("docker-tls-manager apply >/dev/null 2>&1");
    sweep(&m, "renew --force server", &["renameat"], &|_| {});
}

#[test]
fn crash_at_every_boundary_of_deconfigure() {
    let m = Machine::up("crash-deconf");
    m.ok("docker-tls-manager apply >/dev/null 2>&1");
    // each kind starts configured (a completed deconfigure ends one kind's sweep)
    let prepare = |m: &Machine| {
        m.ok("systemctl reset-failed docker.service docker-tcp.socket 2>/dev/null; true");
        m.ok("docker-tls-manager apply >/dev/null 2>&1");
    };
    sweep(&m, "deconfigure", &["renameat", "unlink"], &prepare);
    // the completed deconfigure above was followed by nothing: the host is stock again
    let s = m.ok("ls /etc/systemd/system/docker-tcp.socket /etc/docker/daemon.json 2>&1; systemctl is-active docker; true");
    assert!(
        s.contains("No such file") && s.trim().ends_with("active"),
        "{s}"
    );
}
