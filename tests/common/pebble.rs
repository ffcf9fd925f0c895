//! Pebble, the ACME test server (Debian's `pebble`), on a [`Lan`](super::lan::Lan): its own
//! HTTPS certificate from a throwaway CA (a CA:FALSE leaf for the LAN address), short-lived
//! certificates, http-01 validated on the port the test names. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::text;

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

    /// [`Pebble::start`], requiring external account binding with `(kid, base64url key)`.
    pub fn start_with_eab(
        lan: &super::lan::Lan,
        addr: &str,
        http_port: u16,
        validity: u64,
        eab: Option<(&str, &str)>,
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
            .args(["netns", "exec", netns, "pebble", "-strict=false", "-config"])
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
