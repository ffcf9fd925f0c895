//! Pebble, the ACME test server (Debian's `pebble`), on a [`Lan`](super::lan::Lan): its own
//! HTTPS certificate from a throwaway CA (a CA:FALSE leaf for the LAN address), short-lived
//! certificates, http-01 validated on the port the test names. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::text;

/// Where [`Pebble::trusted_by`] puts Pebble's HTTPS CA in a machine (`[acme] directory_ca`).
pub const HTTPS_CA_IN_MACHINE: &str = "/etc/docker-tls-manager/acme-https-ca.pem";
/// Where [`Pebble::trusted_by`] puts the root of the chains Pebble issues (`[acme] issuer_root`).
pub const ROOT_IN_MACHINE: &str = "/etc/docker-tls-manager/acme-root.pem";

pub struct Pebble {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `https://ADDR:14000/dir`
    pub directory: String,
    /// The CA of Pebble's own HTTPS certificate (what `[acme] directory_ca` names).
    pub https_ca: PathBuf,
    /// The root of the chains Pebble issues (what `[acme] issuer_root` names).
    pub issuer_root: PathBuf,
    netns: String,
    addr: String,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (installed by scripts/install-deps.sh)");
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o.stderr));
}

impl Pebble {
    /// Starts Pebble in the LAN's namespace on `addr` (given to its bridge, /24), validating http-01
    /// on `http_port`, issuing certificates valid `validity` seconds.
    pub fn start(lan: &super::lan::Lan, addr: &str, http_port: u16, validity: u64) -> Pebble {
        Pebble::start_with_eab(lan, addr, http_port, validity, None)
    }

    /// [`Pebble::start`] with Debian 13's Pebble (2.6), which offers ACME renewal information
    /// (RFC 9773, under `/draft-ietf-acme-ari-03/renewalInfo/`) and `replaces` in new orders;
    /// Debian 12's (2.4) has neither. Run from the cached Debian 13 root (`machine.sh os-root
    /// trixie`, which carries the `pebble` package): its binary needs only libc.
    pub fn start_ari(lan: &super::lan::Lan, addr: &str, http_port: u16, validity: u64) -> Pebble {
        let o = Command::new("bash")
            .args(["tests/machine/machine.sh", "os-root", "trixie"])
            .env("DTM_MACHINE_QUIET", "1")
            .output()
            .expect("bash");
        assert!(
            o.status.success(),
            "the Debian 13 root (for its pebble): {}",
            text(&o.stderr)
        );
        let bin = PathBuf::from(text(&o.stdout).trim()).join("usr/bin/pebble");
        assert!(
            bin.is_file(),
            "'{}' is missing: the Debian 13 root must carry the pebble package (OS_PACKAGES in \
             tests/machine/machine.sh)",
            bin.display()
        );
        Pebble::start_full(lan, addr, http_port, validity, None, bin.to_str().unwrap())
    }

    /// [`Pebble::start`], requiring external account binding with `(kid, base64url key)`.
    pub fn start_with_eab(
        lan: &super::lan::Lan,
        addr: &str,
        http_port: u16,
        validity: u64,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        Pebble::start_full(lan, addr, http_port, validity, eab, "pebble")
    }

    fn start_full(
        lan: &super::lan::Lan,
        addr: &str,
        http_port: u16,
        validity: u64,
        eab: Option<(&str, &str)>,
        binary: &str,
    ) -> Pebble {
        let netns = lan.netns.as_str();
        super::lan::ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "br0",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "https-ca.key",
                "-out",
                "https-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=pebble https test CA",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=pebble",
            ],
        );
        std::fs::write(
            d.join("ext"),
            format!(
                "subjectAltName=IP:{addr}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "https-ca.pem",
                "-CAkey",
                "https-ca.key",
                "-CAcreateserial",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("{addr}:14000"),
            "managementListenAddress": format!("{addr}:15000"),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
            "externalAccountMACKeys": eab.map(|(k, v)| serde_json::json!({ k: v })).unwrap_or(serde_json::json!({})),
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(d.join("pebble.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", netns, binary, "-strict=false", "-config"])
            .arg(d.join("config.json"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("pebble (installed by scripts/install-deps.sh)");
        let p = Pebble {
            child,
            directory: format!("https://{addr}:14000/dir"),
            https_ca: d.join("https-ca.pem"),
            issuer_root: d.join("issuer-root.pem"),
            netns: netns.to_string(),
            addr: addr.to_string(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let root = p.curl(&format!("https://{addr}:15000/roots/0"));
            if let Some(root) = root.filter(|r| r.contains("BEGIN CERTIFICATE")) {
                std::fs::write(&p.issuer_root, root).unwrap();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not come up: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// Copies Pebble's HTTPS CA and its issuing root into the machine whose root directory
    /// is `machine_root`, as [`HTTPS_CA_IN_MACHINE`] and [`ROOT_IN_MACHINE`]; returns the
    /// machine's `etc/docker-tls-manager`.
    pub fn trusted_by(&self, machine_root: &Path) -> PathBuf {
        let dir = machine_root.join("etc/docker-tls-manager");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&self.https_ca, dir.join("acme-https-ca.pem")).unwrap();
        std::fs::copy(&self.issuer_root, dir.join("acme-root.pem")).unwrap();
        dir
    }

    /// The `[acme]` section for this Pebble (the copies [`Pebble::trusted_by`] made), with
    /// `issuer_root` and then the lines `extra`.
    pub fn config(&self, issuer_root: &str, extra: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\ndirectory_ca = \"{HTTPS_CA_IN_MACHINE}\"\n\
             issuer_root = \"{issuer_root}\"\n{extra}",
            self.directory
        )
    }

    /// Pebble's renewal information for the certificate with RFC 9773 identifier `cert_id`
    /// (the JSON), the URL taken from its directory.
    pub fn renewal_info(&self, cert_id: &str) -> String {
        let dir: serde_json::Value =
            serde_json::from_str(&self.curl(&self.directory).expect("pebble's directory")).unwrap();
        let base = dir["renewalInfo"]
            .as_str()
            .unwrap_or_else(|| panic!("pebble offers no renewalInfo: {dir}"));
        self.curl(&format!("{base}/{cert_id}"))
            .unwrap_or_else(|| panic!("no renewal information for {cert_id}: {}", self.log()))
    }

    /// Revokes `cert_pem` (RFC 8555 §7.6) with the account in `account_json` (what the host
    /// keeps in `acme-account.json`: `{directory, credentials}`), from inside the LAN's
    /// namespace (a thread of its own enters it).
    pub fn revoke(&self, account_json: &str, cert_pem: &str) {
        let netns = format!("/run/netns/{}", self.netns);
        let https_ca = self.https_ca.clone();
        let stored: serde_json::Value = serde_json::from_str(account_json).unwrap();
        let credentials: instant_acme::AccountCredentials =
            serde_json::from_value(stored["credentials"].clone()).unwrap();
        let der = {
            use base64::Engine as _;
            let b64: String = cert_pem
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&netns).unwrap();
            // SAFETY: setns on this thread only, with a file we hold open.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {netns}: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let account = instant_acme::Account::builder_with_root(&https_ca)
                    .unwrap()
                    .from_credentials(credentials)
                    .await
                    .unwrap();
                let cert = rustls::pki_types::CertificateDer::from(der);
                account
                    .revoke(&instant_acme::RevocationRequest {
                        certificate: &cert,
                        reason: None,
                    })
                    .await
                    .unwrap();
            });
        })
        .join()
        .expect("revocation at pebble");
    }

    fn curl(&self, url: &str) -> Option<String> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sf",
                "--max-time",
                "5",
                "--cacert",
            ])
            .arg(&self.https_ca)
            .arg(url)
            .output()
            .ok()?;
        o.status.success().then(|| text(&o.stdout))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Makes Pebble unreachable from the LAN (its address leaves the bridge: connections
    /// fail within seconds) while it keeps running, so its issuing root stays the same.
    pub fn cut(&self) {
        super::lan::ip(&[
            "-n",
            &self.netns,
            "addr",
            "del",
            &format!("{}/24", self.addr),
            "dev",
            "br0",
        ]);
    }

    /// Undoes [`Pebble::cut`].
    pub fn reconnect(&self) {
        super::lan::ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            &format!("{}/24", self.addr),
            "dev",
            "br0",
        ]);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
