//! The PKI through the real binary, checked with independent tools: openssl (verify, x509
//! -text, s_server), curl for mutual-TLS handshakes, and the docker CLI for context import.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, snapshot, text, tool};

fn openssl_text(path: &std::path::Path) -> String {
    let o = tool("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success());
    text(&o.stdout)
}

#[test]
fn apply_issues_a_chain_openssl_verifies_with_the_right_extensions() {
    let s = Sandbox::new(
        "[server]\ndns_names = [\"docker.example.net\"]\nip_addresses = [\"192.0.2.77\"]",
    );
    let out = s.ok(&["apply"]);
    assert!(out.contains("create CA"), "{out}");
    let ca = s.path("certs/ca.pem");
    for leaf in ["certs/server-cert.pem", "state/clients/admin/cert.pem"] {
        let o = tool("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca)
            .arg(s.path(leaf))
            .output()
            .unwrap();
        assert!(o.status.success(), "{leaf}: {}", text(&o.stderr));
    }
    let ca_text = openssl_text(&ca);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
    let server = openssl_text(&s.path("certs/server-cert.pem"));
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(
        !server.contains("TLS Web Client Authentication"),
        "{server}"
    );
    for san in [
        "DNS:localhost",
        "DNS:docker.example.net",
        "IP Address:127.0.0.1",
        "IP Address:192.0.2.77",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(server.contains(san), "missing {san}: {server}");
    }
    let client = openssl_text(&s.path("state/clients/admin/cert.pem"));
    assert!(
        client.contains("TLS Web Client Authentication") && client.contains("CN = admin"),
        "{client}"
    );
    // Serial: 128 random bits; not_before backdated.
    let serial = tool("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        text(&serial.stdout).trim().len() >= "serial=".len() + 16,
        "{}",
        text(&serial.stdout)
    );
    // Keys are unencrypted PKCS#8 and mode 0600; key directories 0700.
    let key = std::fs::read_to_string(s.path("certs/server-key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(s.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("certs/server-key.pem"), 0o600);
    assert_eq!(mode("state/ca-key.pem"), 0o600);
    assert_eq!(mode("state/clients/admin/key.pem"), 0o600);
    assert_eq!(mode("certs/ca.pem"), 0o644);
    assert_eq!(mode("certs"), 0o700);
    assert_eq!(mode("state/clients/admin"), 0o700);
    // Converged: a second apply changes nothing.
    let before = snapshot(s.dir.path());
    assert!(s.ok(&["apply"]).contains("nothing to do"));
    assert_eq!(before, snapshot(s.dir.path()));
}

#[test]
fn every_key_type_verifies() {
    for kt in ["ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"] {
        let s = Sandbox::new(&format!(
            "[ca]\nkey_type = \"{kt}\"\n[server]\nkey_type = \"{kt}\"\n[clients]\nkey_type = \"{kt}\""
        ));
        s.ok(&["apply"]);
        let o = tool("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(s.path("certs/ca.pem"))
            .arg(s.path("certs/server-cert.pem"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{kt}: {}", text(&o.stderr));
        // The status reports the key type read back from the certificate.
        let st: serde_json::Value = serde_json::from_str(&s.ok(&["status", "--json"])).unwrap();
        assert!(
            st["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["key_type"] == kt),
            "{st}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// openssl s_server requiring a client certificate from `ca`.
fn s_server(s: &Sandbox, port: u16) -> Server {
    let child = tool("openssl")
        .args([
            "s_server",
            "-www",
            "-Verify",
            "1",
            "-verify_return_error",
            "-accept",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(s.path("certs/ca.pem"))
        .arg("-cert")
        .arg(s.path("certs/server-cert.pem"))
        .arg("-key")
        .arg(s.path("certs/server-key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

fn curl(
    ca: &std::path::Path,
    port: u16,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> std::process::Output {
    let mut c = tool("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    c.arg(format!("https://localhost:{port}/"))
        .output()
        .unwrap()
}

#[test]
fn mutual_tls_accepts_our_client_and_refuses_others() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    let other = Sandbox::new("");
    other.ok(&["apply"]);
    let port = free_port();
    let _srv = s_server(&s, port);
    let ca = s.path("certs/ca.pem");

    let ok = curl(
        &ca,
        port,
        Some((
            &s.path("state/clients/admin/cert.pem"),
            &s.path("state/clients/admin/key.pem"),
        )),
    );
    assert!(
        ok.status.success(),
        "our client refused: {}",
        text(&ok.stderr)
    );
    assert!(
        text(&ok.stdout).contains("s_server"),
        "{}",
        text(&ok.stdout)
    );

    let none = curl(&ca, port, None);
    assert!(
        !none.status.success(),
        "accepted a client without certificate: {}",
        text(&none.stdout)
    );

    let foreign = curl(
        &ca,
        port,
        Some((
            &other.path("state/clients/admin/cert.pem"),
            &other.path("state/clients/admin/key.pem"),
        )),
    );
    assert!(
        !foreign.status.success(),
        "accepted a client from another CA: {}",
        text(&foreign.stdout)
    );

    // The server certificate presented as a client certificate has no clientAuth: refused.
    let server_as_client = curl(
        &ca,
        port,
        Some((
            &s.path("certs/server-cert.pem"),
            &s.path("certs/server-key.pem"),
        )),
    );
    assert!(
        !server_as_client.status.success(),
        "accepted the server certificate as a client"
    );

    // And a client that trusts another CA refuses our server.
    let wrong_trust = curl(
        &other.path("certs/ca.pem"),
        port,
        Some((
            &s.path("state/clients/admin/cert.pem"),
            &s.path("state/clients/admin/key.pem"),
        )),
    );
    assert!(!wrong_trust.status.success());
}

#[test]
fn bad_configs_exit_2_name_key_and_file_and_write_nothing() {
    let cases = [
        ("[server]\nrenew_before = \"100d\"", "[server] renew_before"),
        ("[clients]\nvalidity = \"30s\"", "[clients] validity"),
        // Used to pass validation, then panic when issuing (beyond year 9999).
        ("[ca]\nvalidity = \"10000y\"", "[ca] validity"),
        (
            "[server]\nvalidity = \"1h\"\nrenew_before = \"59m30s\"",
            "[server] renew_before",
        ),
        (
            "[server]\nip_addresses = [\"not-an-ip\"]",
            "[server] ip_addresses",
        ),
        ("[ca]\nkey_type = \"dsa-1024\"", "[ca] key_type"),
        ("[server]\nbogus = 1", "bogus"),
        ("this is not toml", "config.toml"),
    ];
    for (extra, key) in cases {
        let s = Sandbox::new("");
        // Put the bad text before the [docker] table the sandbox appends.
        let body = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(&s.config, format!("{extra}\n{body}")).unwrap();
        let o = s.run(&["apply"]);
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains(key), "{extra}: {err}");
        assert!(err.contains(&s.config.display().to_string()), "{err}");
        assert!(
            !s.path("state").exists() && !s.path("certs").exists(),
            "wrote files despite a bad config"
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_docker-tls-manager"))
        .args(["--config", "/nonexistent/config.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("/nonexistent/config.toml"));
    let o = Command::new(env!("CARGO_BIN_EXE_docker-tls-manager"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreadable_ca_key_stops_with_exit_1_and_changes_nothing() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    std::fs::write(
        s.path("state/ca-key.pem"),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // Make the server due, so there is something the run would like to do.
    std::fs::remove_file(s.path("certs/server-cert.pem")).unwrap();
    let before = snapshot(s.dir.path());
    let o = s.run(&["apply"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("ca-key.pem") && err.contains("never replaced"),
        "{err}"
    );
    assert_eq!(before, snapshot(s.dir.path()));
}

#[test]
fn repairs_are_backed_up_and_dry_run_changes_nothing() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    let old_cert = std::fs::read(s.path("certs/server-cert.pem")).unwrap();
    std::fs::write(s.path("certs/server-key.pem"), "corrupt").unwrap();
    let before = snapshot(s.dir.path());
    let plan = s.ok(&["apply", "--dry-run"]);
    assert!(
        plan.contains("issue server certificate: unreadable key"),
        "{plan}"
    );
    assert_eq!(before, snapshot(s.dir.path()));
    s.ok(&["apply"]);
    // Both replaced files are in the backup directory.
    let backups: Vec<_> = snapshot(&s.path("state/backup"))
        .into_iter()
        .filter(|(_, _, d)| !d.is_empty())
        .collect();
    assert!(backups.iter().any(|(_, _, d)| d == b"corrupt"));
    assert!(backups.iter().any(|(_, _, d)| *d == old_cert));
    assert!(
        backups
            .iter()
            .filter(|(p, _, _)| p.ends_with("server-key.pem"))
            .all(|(_, m, _)| m & 0o777 == 0o600)
    );
}

#[test]
fn renew_force_server_changes_only_the_server() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    let st = |s: &Sandbox| -> serde_json::Value {
        serde_json::from_str(&s.ok(&["status", "--json"])).unwrap()
    };
    let before = st(&s);
    s.ok(&["renew", "--force", "server"]);
    let after = st(&s);
    let fp = |v: &serde_json::Value, kind: &str| {
        v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == kind)
            .unwrap()["fingerprint_sha256"]
            .clone()
    };
    assert_ne!(fp(&before, "server"), fp(&after, "server"));
    assert_eq!(fp(&before, "ca"), fp(&after, "ca"));
    assert_eq!(fp(&before, "client"), fp(&after, "client"));
    let server = after["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "server")
        .unwrap()
        .clone();
    for k in [
        "subject",
        "serial",
        "not_before",
        "not_after",
        "days_left",
        "next_renewal",
        "cert_file",
        "key_file",
    ] {
        assert!(!server[k].is_null(), "status lacks {k}: {server}");
    }
    assert_eq!(server["state"], "ok");
    assert!(server["days_left"].as_i64().unwrap() >= 89);
}

#[test]
fn clients_add_list_bundle_env_remove() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    s.ok(&["client", "add", "ci-runner"]);
    let list = s.ok(&["client", "list"]);
    assert!(
        list.contains("admin\tconfig") && list.contains("ci-runner\tadded"),
        "{list}"
    );
    let o = s.run(&["client", "add", "ci-runner"]);
    assert_eq!(o.status.code(), Some(1));
    let o = s.run(&["client", "add", "../evil"]);
    assert_eq!(o.status.code(), Some(2));

    // tar.gz: extracts to the three files, which verify against the CA.
    s.ok(&[
        "client",
        "bundle",
        "ci-runner",
        "-o",
        "b.tar.gz",
        "--host",
        "dock.example.net",
    ]);
    let out = s.path("unpacked");
    std::fs::create_dir(&out).unwrap();
    let o = tool("tar")
        .arg("-xzf")
        .arg(s.path("b.tar.gz"))
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(out.join(f).is_file(), "{f} missing from bundle");
    }
    let v = tool("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("ca.pem"))
        .arg(out.join("cert.pem"))
        .output()
        .unwrap();
    assert!(v.status.success());

    let env = s.ok(&["client", "env", "ci-runner", "--host", "dock.example.net"]);
    assert!(
        env.contains("export DOCKER_HOST=tcp://dock.example.net:2376"),
        "{env}"
    );
    assert!(env.contains("export DOCKER_TLS_VERIFY=1"));
    assert!(
        env.contains(&format!(
            "export DOCKER_CERT_PATH={}",
            s.path("state/clients/ci-runner").display()
        )),
        "{env}"
    );

    // Removing a client named in the config is refused with a pointer to the config.
    let o = s.run(&["client", "remove", "admin"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("[clients] names"));
    let out = s.ok(&["client", "remove", "ci-runner"]);
    assert!(out.contains("stays valid until"), "{out}");
    assert!(!s.path("state/clients/ci-runner").exists());
    let list = s.ok(&["client", "list"]);
    assert!(
        list.lines()
            .filter(|l| l.starts_with("ci-runner\t"))
            .all(|l| l.starts_with("ci-runner\trevoked\tserial ")),
        "{list}"
    );
    assert!(list.contains("ci-runner\trevoked\tserial "), "{list}");
    let o = s.run(&["client", "bundle", "ci-runner"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn context_bundle_is_accepted_by_docker_context_import() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    s.ok(&[
        "client",
        "bundle",
        "admin",
        "--format",
        "context",
        "-o",
        "admin.dockercontext",
        "--host",
        "dock.example.net",
    ]);
    let cfg = s.path("docker-config");
    let docker = |args: &[&str]| {
        let o = tool("docker")
            .env("DOCKER_CONFIG", &cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "docker {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    docker(&[
        "context",
        "import",
        "dock",
        s.path("admin.dockercontext").to_str().unwrap(),
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&docker(&["context", "inspect", "dock"])).unwrap();
    assert_eq!(
        inspect[0]["Endpoints"]["docker"]["Host"],
        "tcp://dock.example.net:2376"
    );
    assert_eq!(inspect[0]["Endpoints"]["docker"]["SkipTLSVerify"], false);
    let tls_path = inspect[0]["Storage"]["TLSPath"].as_str().unwrap();
    let imported = std::fs::read(std::path::Path::new(tls_path).join("docker/cert.pem")).unwrap();
    assert_eq!(
        imported,
        std::fs::read(s.path("state/clients/admin/cert.pem")).unwrap()
    );
}

#[test]
fn check_reports_and_changes_nothing() {
    let s = Sandbox::new("");
    let before = snapshot(s.dir.path());
    let out = s.ok(&["check"]);
    assert!(
        out.contains("configuration valid") && out.contains("create CA"),
        "{out}"
    );
    assert_eq!(before, snapshot(s.dir.path()));
}

#[test]
fn bundle_refuses_a_key_that_does_not_match_its_certificate() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    s.ok(&["client", "add", "other"]);
    let refused = |s: &Sandbox, what: &str| {
        let o = s.run(&["client", "bundle", "admin", "-o", "b.tar.gz", "--host", "h"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(&s.path("state/clients/admin/cert.pem").display().to_string())
                && err.contains("docker-tls-manager apply"),
            "{what}: {err}"
        );
        assert!(!s.path("b.tar.gz").exists(), "{what}: a bundle was written");
        assert!(
            !s.path("state/clients/admin/handed-out.json").exists(),
            "{what}: recorded as handed out"
        );
        err
    };
    // A new key beside an old certificate (a renewal caught halfway).
    let admin_key = std::fs::read(s.path("state/clients/admin/key.pem")).unwrap();
    std::fs::copy(
        s.path("state/clients/other/key.pem"),
        s.path("state/clients/admin/key.pem"),
    )
    .unwrap();
    let err = refused(&s, "swapped key");
    assert!(
        err.contains(&s.path("state/clients/admin/key.pem").display().to_string())
            && err.contains("does not match"),
        "{err}"
    );
    std::fs::write(s.path("state/clients/admin/key.pem"), admin_key).unwrap();
    // A matching pair from another CA.
    let foreign = Sandbox::new("");
    foreign.ok(&["apply"]);
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(
            foreign.path(&format!("state/clients/admin/{f}")),
            s.path(&format!("state/clients/admin/{f}")),
        )
        .unwrap();
    }
    let err = refused(&s, "another CA");
    assert!(err.contains("not signed by the current CA"), "{err}");
    // Repaired by apply, the bundle goes out.
    s.ok(&["apply"]);
    s.ok(&["client", "bundle", "admin", "-o", "b.tar.gz", "--host", "h"]);
    assert!(s.path("b.tar.gz").is_file());
}

#[test]
fn backups_keep_at_most_keep_copies_per_file() {
    let s = Sandbox::new("[backup]\nkeep = 2");
    s.ok(&["apply"]);
    for _ in 0..4 {
        s.ok(&["renew", "--force", "all"]);
    }
    // backup/STAMP/PATH: count the copies of each PATH.
    let root = s.path("state/backup");
    let mut copies = std::collections::BTreeMap::<std::path::PathBuf, usize>::new();
    for stamp in std::fs::read_dir(&root).unwrap().flatten() {
        for (p, _, _) in snapshot(&stamp.path()) {
            if p.is_file() {
                let rel = p.strip_prefix(stamp.path()).unwrap().to_path_buf();
                *copies.entry(rel).or_default() += 1;
            }
        }
    }
    assert!(!copies.is_empty(), "nothing was backed up");
    for (rel, n) in &copies {
        assert!(*n <= 2, "{n} copies of {}", rel.display());
    }
    // Renewed four times: exactly the two newest copies of the old server key remain.
    let server_key = copies
        .iter()
        .find(|(rel, _)| rel.ends_with("certs/server-key.pem"))
        .map(|(_, n)| *n);
    assert_eq!(server_key, Some(2), "{copies:?}");
    // The current key is not among them: the copies are older keys.
    let current = std::fs::read(s.path("certs/server-key.pem")).unwrap();
    assert!(
        snapshot(&root)
            .iter()
            .filter(|(p, _, _)| p.ends_with("server-key.pem"))
            .all(|(_, _, d)| *d != current)
    );
}

fn openssl_subject(path: &std::path::Path) -> String {
    let o = tool("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

fn openssl_verify(ca: &std::path::Path, leaf: &std::path::Path) {
    let o = tool("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(leaf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        leaf.display(),
        text(&o.stderr)
    );
}

#[test]
fn the_ca_keeps_its_subject_when_renewed_or_resigned_after_a_host_rename() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    // A CA made when the host had another name: the same key, re-signed by openssl under the
    // old name; the next apply reissues the leaves under it.
    let ca = s.path("certs/ca.pem");
    let o = tool("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(s.path("state/ca-key.pem"))
        .args([
            "-subj",
            "/O=docker-tls-manager/CN=docker-tls-manager CA for old-name",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out",
        ])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    s.ok(&["apply"]);
    let subject = openssl_subject(&ca);
    assert!(subject.contains("old-name"), "{subject}");
    let admin = s.path("state/clients/admin/cert.pem");
    let admin_before = std::fs::read(&admin).unwrap();
    openssl_verify(&ca, &admin);

    // ca.pem lost: re-created from the record, then (record lost too) from the leaves.
    for lose in ["certs/ca.pem", "state/ca-subject.json"] {
        std::fs::remove_file(&ca).unwrap();
        let _ = std::fs::remove_file(s.path(lose));
        let out = s.ok(&["apply"]);
        assert!(out.contains("re-sign CA"), "{out}");
        assert_eq!(openssl_subject(&ca), subject);
        assert_eq!(std::fs::read(&admin).unwrap(), admin_before);
        openssl_verify(&ca, &admin);
    }

    // Routine renewal (made due by a longer renew_before): same subject, the old leaf verifies.
    let body = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("[ca]\nvalidity = \"20y\"\nrenew_before = \"15y\"\n{body}"),
    )
    .unwrap();
    let ca_before = std::fs::read(&ca).unwrap();
    let out = s.ok(&["apply"]);
    assert!(out.contains("re-sign CA"), "{out}");
    assert_ne!(std::fs::read(&ca).unwrap(), ca_before);
    assert_eq!(openssl_subject(&ca), subject);
    openssl_verify(&ca, &admin);
}

/// `ca export` on one host, `ca import` on another: one client bundle for both, the key never
/// written unprotected, a wrong passphrase or a refused import changing nothing.
#[test]
fn ca_export_import_gives_two_hosts_one_client_trust() {
    use std::os::unix::fs::PermissionsExt;
    let a = Sandbox::new("[server]\ndns_names = [\"a.example.net\"]");
    let b = Sandbox::new("[server]\ndns_names = [\"b.example.net\"]");
    a.ok(&["apply"]);
    b.ok(&["apply"]);
    // Export with a passphrase made here: shown once on the terminal (a pty from `script`),
    // never on stdout, stderr or in the log; without a terminal it is refused.
    let export = a.path("fleet-ca.pem");
    let o = a.run(&["ca", "export", "-o", export.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no terminal"),
        "{}",
        text(&o.stderr)
    );
    assert!(!export.exists());
    let cmd = format!(
        "{} --config {} ca export -o {} 2>{}",
        env!("CARGO_BIN_EXE_docker-tls-manager"),
        a.config.display(),
        export.display(),
        a.path("export-stderr").display()
    );
    let o = tool("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
    let tty = text(&o.stdout);
    let pass = tty
        .lines()
        .find_map(|l| l.split("separately from the file): ").nth(1))
        .unwrap_or_else(|| panic!("no passphrase shown: {tty}"))
        .trim()
        .to_string();
    assert_eq!(pass.len(), 29, "{pass}");
    let logged = std::fs::read_to_string(a.path("export-stderr")).unwrap();
    assert!(
        !logged.contains(&pass),
        "the passphrase went to stderr: {logged}"
    );
    let sealed = std::fs::read_to_string(&export).unwrap();
    assert_eq!(
        std::fs::metadata(&export).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!sealed.contains("BEGIN PRIVATE KEY"), "{sealed}");
    // openssl opens it with the passphrase (the key is A's CA key), and not without.
    let pass_file = a.path("pass");
    std::fs::write(&pass_file, format!("{pass}\n")).unwrap();
    let key_of = |args: &[&str], file: &std::path::Path| {
        let o = tool("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(file)
            .args(args)
            .output()
            .unwrap();
        (o.status.success(), text(&o.stdout))
    };
    let pass_arg = format!("file:{}", pass_file.display());
    let (ok, opened) = key_of(&["-passin", &pass_arg], &export);
    assert!(ok);
    assert_eq!(opened, key_of(&[], &a.path("state/ca-key.pem")).1);
    assert!(!key_of(&["-passin", "pass:wrong"], &export).0);

    // A wrong passphrase: exit 2, B untouched.
    let before = snapshot(b.dir.path());
    let wrong = b.path("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let o = b.run(&[
        "ca",
        "import",
        export.to_str().unwrap(),
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("passphrase is wrong"),
        "{}",
        text(&o.stderr)
    );
    // B's own CA has issued a client certificate: refused without --force, naming it.
    let o = b.run(&[
        "ca",
        "import",
        export.to_str().unwrap(),
        "--passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("'admin'"), "{}", text(&o.stderr));
    let after: Vec<_> = snapshot(b.dir.path())
        .into_iter()
        .filter(|(p, ..)| !p.ends_with("wrong") && !p.ends_with("lock"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, ..)| !p.ends_with("lock"))
        .collect();
    assert_eq!(after, before, "a refused import changed files");

    let out = b.ok(&[
        "ca",
        "import",
        export.to_str().unwrap(),
        "--passphrase-file",
        pass_file.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.contains("CA imported"), "{out}");
    // One trust: A's bundle verifies B's server, B's client verifies against A's CA, and
    // B issued its own server certificate (its own name) from the shared key.
    let a_ca = a.path("certs/ca.pem");
    openssl_verify(&a_ca, &b.path("certs/server-cert.pem"));
    openssl_verify(&a_ca, &b.path("state/clients/admin/cert.pem"));
    openssl_verify(
        &b.path("certs/ca.pem"),
        &a.path("state/clients/admin/cert.pem"),
    );
    assert!(openssl_text(&b.path("certs/server-cert.pem")).contains("DNS:b.example.net"));
    assert_eq!(
        std::fs::metadata(b.path("state/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // What it replaced is in the backups; importing again is a no-op.
    assert!(
        snapshot(&b.path("state/backup"))
            .iter()
            .any(|(p, ..)| p.ends_with("ca-key.pem")),
        "old CA key not backed up"
    );
    let again = b.ok(&[
        "ca",
        "import",
        export.to_str().unwrap(),
        "--passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert!(again.contains("already uses this CA"), "{again}");
    // An unencrypted key in place of the export is refused.
    let plain = b.path("plain.pem");
    std::fs::write(
        &plain,
        format!(
            "{}{}",
            std::fs::read_to_string(a.path("certs/ca.pem")).unwrap(),
            std::fs::read_to_string(a.path("state/ca-key.pem")).unwrap()
        ),
    )
    .unwrap();
    let o = b.run(&[
        "ca",
        "import",
        plain.to_str().unwrap(),
        "--passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("not encrypted"),
        "{}",
        text(&o.stderr)
    );
}

/// `ca import` killed at every write (the N-th rename: the atomic-write helper renames each
/// file into place), then `apply`: the host ends on one CA, whole — the imported one, trusted
/// by the other host's clients, or its own, trusted by its own — never a mix.
#[test]
fn ca_import_killed_at_every_write_converges_on_one_ca() {
    let a = Sandbox::new("");
    a.ok(&["apply"]);
    let export = a.path("fleet-ca.pem");
    let pass = a.path("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    a.ok(&[
        "ca",
        "export",
        "-o",
        export.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    let pubkey = |cert: &std::path::Path| {
        let o = tool("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        text(&o.stdout)
    };
    let a_ca = a.path("certs/ca.pem");
    let mut finished = false;
    for n in 1..40 {
        let b = Sandbox::new("");
        b.ok(&["apply"]);
        let own_ca = b.path("own-ca.pem");
        std::fs::copy(b.path("certs/ca.pem"), &own_ca).unwrap();
        let o = tool("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=renameat", "-e"])
            .arg(format!("inject=renameat:signal=KILL:when={n}"))
            .arg(env!("CARGO_BIN_EXE_docker-tls-manager"))
            .arg("--config")
            .arg(&b.config)
            .args(["ca", "import", "--force", "--passphrase-file"])
            .arg(&pass)
            .arg(&export)
            .output()
            .unwrap();
        let killed = !o.status.success();
        b.ok(&["apply"]);
        let ca = b.path("certs/ca.pem");
        let key_pub = tool("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(b.path("state/ca-key.pem"))
            .output()
            .unwrap();
        assert_eq!(
            text(&key_pub.stdout),
            pubkey(&ca),
            "kill #{n}: CA key and certificate differ"
        );
        if pubkey(&ca) == pubkey(&a_ca) {
            // Imported: the other host's clients trust this server, and it trusts them.
            openssl_verify(&a_ca, &b.path("certs/server-cert.pem"));
            openssl_verify(&ca, &a.path("state/clients/admin/cert.pem"));
        } else {
            assert_eq!(pubkey(&ca), pubkey(&own_ca), "kill #{n}: a third CA");
            openssl_verify(&own_ca, &b.path("certs/server-cert.pem"));
            openssl_verify(&own_ca, &b.path("state/clients/admin/cert.pem"));
        }
        let temps: Vec<_> = snapshot(b.dir.path())
            .into_iter()
            .filter(|(p, ..)| p.to_string_lossy().contains(".dtm-tmp-"))
            .collect();
        assert!(temps.is_empty(), "kill #{n}: temp files left: {temps:?}");
        if !killed {
            assert!(
                n > 3,
                "the import finished after {n} renames: too few to be real"
            );
            finished = true;
            break;
        }
    }
    assert!(finished, "the import never ran to the end");
}

/// Export and import move one CA: refused while a rollover holds two, nothing changed.
#[test]
fn ca_export_and_import_wait_for_a_rollover_to_finish() {
    let a = Sandbox::new("");
    let b = Sandbox::new("");
    a.ok(&["apply"]);
    b.ok(&["apply"]);
    let pass = a.path("pass");
    std::fs::write(&pass, "sixteen chars at least\n").unwrap();
    let export = a.path("fleet-ca.pem");
    b.ok(&[
        "ca",
        "export",
        "-o",
        export.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    // A shared CA is not rolled over on one host alone (the others would keep the old key).
    let o = b.run(&["ca", "rollover", "start"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("shared with other hosts"),
        "{}",
        text(&o.stderr)
    );
    a.ok(&["ca", "rollover", "start"]);
    let before = snapshot(&a.path("state"));
    for args in [
        vec!["ca", "export", "-o", "/dev/null", "--passphrase-file"],
        vec![
            "ca",
            "import",
            export.to_str().unwrap(),
            "--force",
            "--passphrase-file",
        ],
    ] {
        let mut args = args.clone();
        args.push(pass.to_str().unwrap());
        let o = a.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("rollover is in progress"),
            "{}",
            text(&o.stderr)
        );
    }
    let after: Vec<_> = snapshot(&a.path("state"))
        .into_iter()
        .filter(|(p, ..)| !p.ends_with("lock"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, ..)| !p.ends_with("lock"))
        .collect();
    assert_eq!(after, before);
}

/// `client revocations import` takes only what `export` writes; a bad file changes nothing.
#[test]
fn revocations_import_refuses_what_export_does_not_write() {
    let a = Sandbox::new("");
    a.ok(&["apply"]);
    a.ok(&["client", "add", "bob"]);
    a.ok(&["client", "revoke", "bob"]);
    let list = a.path("revoked.json");
    a.ok(&[
        "client",
        "revocations",
        "export",
        "-o",
        list.to_str().unwrap(),
    ]);
    let b = Sandbox::new("");
    b.ok(&["apply"]);
    let before = snapshot(&b.path("state"));
    for bad in [
        "not json",
        "{\"revoked\": [{\"name\": \"x\", \"serial\": \"zz\", \"issuer_sha256\": \"00\", \"issuer\": \"\", \"not_after\": \"\", \"revoked_at\": \"\"}]}",
        "{\"revoked\": [], \"extra\": 1}",
    ] {
        let f = b.path("bad.json");
        std::fs::write(&f, bad).unwrap();
        let o = b.run(&["client", "revocations", "import", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("nothing was changed"),
            "{}",
            text(&o.stderr)
        );
    }
    let strip = |v: Vec<(std::path::PathBuf, u32, Vec<u8>)>| -> Vec<_> {
        v.into_iter()
            .filter(|(p, ..)| !p.ends_with("lock"))
            .collect()
    };
    assert_eq!(strip(snapshot(&b.path("state"))), strip(before));
    let out = b.ok(&["client", "revocations", "import", list.to_str().unwrap()]);
    assert!(out.contains("1 new revocation"), "{out}");
    let listed = b.ok(&["client", "list"]);
    assert!(listed.contains("bob"), "{listed}");
}

#[test]
fn revoke_reaches_certificates_whose_backups_were_pruned_and_roles_are_in_the_subject() {
    let s = Sandbox::new("");
    s.ok(&["apply"]);
    s.ok(&["client", "add", "grafana", "--role", "monitoring"]);
    let cert = s.path("state/clients/grafana/cert.pem");
    let subject = openssl_subject(&cert);
    assert!(subject.contains("OU=role=monitoring"), "{subject}");
    // A renewal: the old certificate stays valid; then every backup is gone (pruned).
    s.ok(&["renew", "--force", "clients"]);
    std::fs::remove_dir_all(s.path("state/backup")).unwrap();
    let record = std::fs::read_to_string(s.path("state/authz/issued.jsonl")).unwrap();
    assert_eq!(
        record.lines().filter(|l| l.contains("\"grafana\"")).count(),
        2,
        "{record}"
    );
    let out = s.ok(&["client", "revoke", "grafana"]);
    assert_eq!(
        out.matches("revoked certificate of 'grafana'").count(),
        2,
        "the renewed-away certificate too: {out}"
    );
    // Removed, then revoked by name again: the record still knows it (nothing new to revoke).
    s.ok(&["client", "remove", "grafana"]);
    let o = s.run(&["client", "revoke", "grafana"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // A role from the configuration reaches the certificate at the next apply; `client list`
    // says so before.
    s.ok(&["client", "add", "deployer"]);
    let admin_subject = openssl_subject(&s.path("state/clients/deployer/cert.pem"));
    assert!(admin_subject.contains("OU=role=admin"), "{admin_subject}");
    let cfg = std::fs::read_to_string(s.path("config.toml")).unwrap();
    std::fs::write(
        s.path("config.toml"),
        format!("{cfg}\n[authz]\nroles = {{ deployer = \"operator\" }}\n"),
    )
    .unwrap();
    let list = s.ok(&["client", "list"]);
    assert!(
        list.contains("deployer\tadded\trole operator (its certificate carries admin"),
        "{list}"
    );
    s.ok(&["apply"]);
    let subject = openssl_subject(&s.path("state/clients/deployer/cert.pem"));
    assert!(subject.contains("OU=role=operator"), "{subject}");
    // roles.json corrupt: `client list` says what that means, apply issues no client.
    std::fs::write(s.path("state/authz/roles.json"), "{").unwrap();
    let list = s.ok(&["client", "list"]);
    assert!(list.contains("refuses every client over TLS"), "{list}");
}
