//! The state the plugin decides on: the revocation list (serial + issuer of each revoked
//! certificate) and the roles, read again only when one of their files changes; and the
//! decision for one request.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Files, Role, roles};
use crate::pki::PROBE_CN;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The client name (its CN) when it was revoked: for people, not for matching.
    pub name: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// SHA-256 of the issuer name's DER: with the serial, what identifies the certificate.
    pub issuer_sha256: String,
    /// The issuer, readable.
    pub issuer: String,
    pub not_after: String,
    pub revoked_at: String,
}

/// `authz/revoked.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    pub revoked: Vec<Revoked>,
}

impl RevocationList {
    /// Absent: nothing revoked. Unreadable or corrupt: an error (the plugin then refuses TLS).
    pub fn load(path: &Path) -> Result<RevocationList> {
        load_json(path, "the revocation list")
    }

    pub fn contains(&self, id: &CertId) -> bool {
        self.revoked
            .iter()
            .any(|r| r.serial == id.serial && r.issuer_sha256 == id.issuer_sha256)
    }
}

/// One client certificate we signed (`authz/issued.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    pub name: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// SHA-256 of the issuer name's DER.
    pub issuer_sha256: String,
    pub issuer: String,
    /// As in [`Revoked::not_after`].
    pub not_after: String,
    /// Seconds since the epoch: when the entry can go (the certificate has expired).
    pub expires: u64,
}

/// `authz/issued.jsonl`: every client certificate we signed that has not expired, one JSON
/// object a line, appended (and synced) before the certificate is written, so `client revoke`
/// reaches certificates whose files and backups are gone (a renewed certificate stays valid
/// until it expires). Appending keeps issuing N clients O(N); a line that does not parse is
/// kept as it is (never dropped) and counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IssuedList {
    pub issued: Vec<Issued>,
    /// Lines that are not a record, as found (a torn last line excepted: see `IssuedLog`).
    pub unreadable: Vec<String>,
}

impl IssuedList {
    /// Absent: empty. Unreadable: an error naming the file.
    pub fn load(path: &Path) -> Result<IssuedList> {
        let text = match std::fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IssuedList::default()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read the record of issued client certificates '{}'",
                        path.display()
                    )
                });
            }
        };
        let mut list = IssuedList::default();
        let torn = !text.is_empty() && !text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Issued>(line) {
                Ok(r) => list.issued.push(r),
                // A crash in the middle of an append: that certificate was never written.
                Err(_) if torn && i + 1 == lines.len() => {}
                Err(_) => list.unreadable.push(line.to_string()),
            }
        }
        Ok(list)
    }

    fn text(&self) -> Result<String> {
        let mut out = String::new();
        for r in &self.issued {
            out += &serde_json::to_string(r)?;
            out.push('\n');
        }
        for l in &self.unreadable {
            out += l;
            out.push('\n');
        }
        Ok(out)
    }
}

/// Records client certificates as one `execute` signs them. The first record of a run drops
/// the entries of expired certificates and a torn last line (the file backed up, then
/// rewritten atomically, 0600); every record is then one appended line, synced.
pub struct IssuedLog<'a> {
    path: PathBuf,
    backups: &'a crate::files::Backups,
    now: std::time::SystemTime,
    tidied: bool,
}

impl<'a> IssuedLog<'a> {
    pub fn new(
        path: PathBuf,
        backups: &'a crate::files::Backups,
        now: std::time::SystemTime,
    ) -> Self {
        IssuedLog {
            path,
            backups,
            now,
            tidied: false,
        }
    }

    /// Records the certificate `cert_pem`, before it is written anywhere.
    pub fn record(&mut self, cert_pem: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let der = crate::pki::inspect::first_cert_der(cert_pem).map_err(|e| anyhow::anyhow!(e))?;
        let id = cert_id(&der)?;
        let info = crate::pki::inspect::cert_info(&der).map_err(|e| anyhow::anyhow!(e))?;
        if !self.tidied {
            self.tidy()?;
        }
        let line = serde_json::to_string(&Issued {
            name: id.cn,
            serial: id.serial,
            issuer_sha256: id.issuer_sha256,
            issuer: id.issuer,
            not_after: id.not_after,
            expires: unix_secs(info.not_after),
        })? + "\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot open '{}'", self.path.display()))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .with_context(|| format!("cannot append to '{}'", self.path.display()))
    }

    fn tidy(&mut self) -> Result<()> {
        let raw = std::fs::read(&self.path).ok();
        let mut list = IssuedList::load(&self.path)?;
        if !list.unreadable.is_empty() {
            tracing::warn!(
                "'{}' holds {} line(s) that are not a record of a certificate: kept as they are",
                self.path.display(),
                list.unreadable.len()
            );
        }
        let now = unix_secs(self.now);
        list.issued.retain(|r| r.expires > now);
        let text = list.text()?;
        if raw.as_deref() != Some(text.as_bytes()) {
            if let Some(dir) = self.path.parent() {
                crate::files::ensure_dir(dir, 0o700)?;
            }
            crate::files::backup(&self.path, self.backups, self.now)?;
            crate::files::atomic_write(&self.path, text.as_bytes(), 0o600)?;
        }
        self.tidied = true;
        Ok(())
    }
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `authz/roles.json`: roles given by `client add --role`.
pub fn load_roles(path: &Path) -> Result<BTreeMap<String, Role>> {
    load_json(path, "the roles given by `client add --role`")
}

/// One of our JSON state files: absent, the empty value; unreadable or corrupt, an error
/// naming `what` and the file.
fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "{what} '{}' is corrupt; restore it from the backup directory",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} '{}'", path.display())),
    }
}

/// What identifies a certificate for revocation, read from its DER.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertId {
    pub cn: String,
    /// The role the certificate carries (subject OU `role=NAME`), if any.
    pub role: Option<String>,
    pub serial: String,
    pub issuer_sha256: String,
    pub issuer: String,
    pub not_after: String,
}

pub fn cert_id(der: &[u8]) -> Result<CertId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not a valid certificate: {e}"))?;
    let serial = cert.tbs_certificate.raw_serial();
    let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    let serial = if first == serial.len() {
        "0".to_string()
    } else {
        hex::encode(&serial[first..])
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string();
    Ok(CertId {
        role: crate::pki::inspect::role_in_subject(cert.subject()),
        cn,
        serial,
        issuer_sha256: hex::encode(Sha256::digest(cert.issuer().as_raw())),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

/// The first certificate of one `RequestPeerCertificates` entry, as DER. dockerd sends each
/// as a JSON byte string, that is base64 of the PEM text; plain PEM is taken too.
pub fn pem_to_der(entry: &str) -> Result<Vec<u8>> {
    let pem = if entry.trim_start().starts_with("-----BEGIN") {
        entry.as_bytes().to_vec()
    } else {
        base64_decode(entry).context("a peer certificate is neither PEM nor base64")?
    };
    crate::pki::inspect::first_cert_der(&pem).map_err(|e| anyhow::anyhow!(e))
}

/// Standard base64 with padding (what Go's encoding/json writes for []byte).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for chunk in b.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n <<= 6;
            if i < 4 - pad {
                n |= val(*c)?;
            } else if *c != b'=' {
                return None;
            }
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A certificate for `cn` as dockerd sends it: base64 of the PEM text.
    fn peer(cn: &str) -> (String, CertId) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0, 0x12, 0x34]));
        let cert = p.self_signed(&key).unwrap();
        let id = cert_id(cert.der()).unwrap();
        (base64_encode(cert.pem().as_bytes()), id)
    }

    fn base64_encode(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn req(cert: Option<&str>, method: &str, uri: &str) -> AuthzRequest {
        AuthzRequest {
            user: cert.map(|_| "x".to_string()).unwrap_or_default(),
            authn: cert.map(|_| "TLS".to_string()).unwrap_or_default(),
            method: method.into(),
            uri: uri.into(),
            certs: cert.map(|c| vec![c.to_string()]),
        }
    }

    #[test]
    fn decisions() {
        let (mon, mon_id) = peer("mon");
        let (probe, _) = peer(PROBE_CN);
        let (gone, gone_id) = peer("gone");
        assert_eq!(gone_id.serial, "1234", "leading zeros dropped");
        let mut roles = BTreeMap::new();
        roles.insert("mon".to_string(), Role::Monitoring);
        let ok: Result<Policy, String> = Ok(Policy {
            revoked: [(gone_id.serial.clone(), gone_id.issuer_sha256.clone())].into(),
            roles,
        });
        let broken: Result<Policy, String> = Err("corrupt".into());
        let ids = &mut HashMap::new();
        // The unix socket: always, even with a corrupt list.
        for p in [&ok, &broken] {
            let d = decide(p, &req(None, "POST", "/containers/create"), ids);
            assert!(d.allow && !d.tls, "{d:?}");
        }
        // The probe: its ping, even with a corrupt list; nothing else.
        for p in [&ok, &broken] {
            assert!(decide(p, &req(Some(&probe), "GET", "/_ping"), ids).allow);
            for (m, uri) in [
                ("GET", "/containers/json"),
                ("POST", "/v1.41/containers/create"),
            ] {
                let d = decide(p, &req(Some(&probe), m, uri), ids);
                assert!(
                    !d.allow && d.tls && d.reason.contains("probe identity may only ping"),
                    "{d:?}"
                );
                assert_eq!(d.client, PROBE_CN);
            }
            // `status` asking whether dockerd consults us: refused with its own reason.
            let d = decide(
                p,
                &req(Some(&probe), "GET", "/_ping?docker-tls-manager-consulted"),
                ids,
            );
            assert!(!d.allow && d.reason == CONSULTED_REASON, "{d:?}");
            let d = decide(
                p,
                &req(Some(&mon), "GET", "/_ping?docker-tls-manager-consulted"),
                ids,
            );
            assert!(d.reason != CONSULTED_REASON, "{d:?}");
        }
        // A corrupt list refuses everyone else over TLS.
        let d = decide(&broken, &req(Some(&mon), "GET", "/_ping"), ids);
        assert!(!d.allow && d.tls && d.reason.contains("corrupt"), "{d:?}");
        // Revoked by serial + issuer; the same name with another serial is fine.
        let d = decide(&ok, &req(Some(&gone), "GET", "/_ping"), ids);
        assert!(!d.allow && d.reason.contains("revoked"), "{d:?}");
        let gone_again = {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, "gone");
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x56]));
            base64_encode(p.self_signed(&key).unwrap().pem().as_bytes())
        };
        assert!(decide(&ok, &req(Some(&gone_again), "GET", "/_ping"), ids).allow);
        // Roles: monitoring lists, cannot exec; unknown names are admin.
        assert!(decide(&ok, &req(Some(&mon), "GET", "/v1.41/containers/json"), ids).allow);
        let d = decide(
            &ok,
            &req(Some(&mon), "POST", "/v1.41/containers/c1/exec"),
            ids,
        );
        assert!(
            !d.allow && d.client == "mon" && d.serial == mon_id.serial,
            "{d:?}"
        );
        // TLS without a certificate, or with garbage: refused.
        let mut r = req(Some(&mon), "GET", "/_ping");
        r.certs = None;
        assert!(!decide(&ok, &r, ids).allow);
        assert!(!decide(&ok, &req(Some("bm90IGEgY2VydA=="), "GET", "/_ping"), ids).allow);
    }

    /// A certificate for `cn` carrying the subject OU `ou`, as dockerd sends it.
    fn peer_with_ou(cn: &str, ou: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, ou);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        base64_encode(p.self_signed(&key).unwrap().pem().as_bytes())
    }

    #[test]
    fn the_role_a_certificate_carries() {
        let mut roles = BTreeMap::new();
        roles.insert("ops".to_string(), Role::Monitoring);
        let ok: Result<Policy, String> = Ok(Policy {
            revoked: HashSet::new(),
            roles,
        });
        let ids = &mut HashMap::new();
        let run = "/v1.41/containers/create";
        let start = "/v1.41/containers/c1/start";
        // A name this host never heard of (a shared CA): the certificate's role applies.
        let stranger = peer_with_ou("stranger", &Role::Monitoring.ou());
        assert!(
            decide(
                &ok,
                &req(Some(&stranger), "GET", "/v1.41/containers/json"),
                ids
            )
            .allow
        );
        let d = decide(&ok, &req(Some(&stranger), "POST", run), ids);
        assert!(!d.allow && d.reason.contains("monitoring"), "{d:?}");
        // Without a role in the certificate and none here: admin (certificates from before).
        let (legacy, _) = peer("legacy");
        assert!(decide(&ok, &req(Some(&legacy), "POST", run), ids).allow);
        // The certificate says admin, this host says monitoring: the more restrictive wins.
        let ops_admin = peer_with_ou("ops", &Role::Admin.ou());
        assert!(!decide(&ok, &req(Some(&ops_admin), "POST", run), ids).allow);
        // The certificate says operator, this host says monitoring: monitoring.
        let ops_operator = peer_with_ou("ops", &Role::Operator.ou());
        assert!(!decide(&ok, &req(Some(&ops_operator), "POST", start), ids).allow);
        // Operator carried, nothing here: operator may start, not create.
        let deployer = peer_with_ou("deployer", &Role::Operator.ou());
        assert!(decide(&ok, &req(Some(&deployer), "POST", start), ids).allow);
        assert!(!decide(&ok, &req(Some(&deployer), "POST", run), ids).allow);
        // A role this version does not know: refused, even for ping.
        let future = peer_with_ou("future", "role=superuser");
        let d = decide(&ok, &req(Some(&future), "GET", "/_ping"), ids);
        assert!(!d.allow && d.reason.contains("superuser"), "{d:?}");
        // Another OU is not a role.
        let team = peer_with_ou("team", "platform");
        assert!(decide(&ok, &req(Some(&team), "POST", run), ids).allow);
        // A role OU in another case, or one that cannot be decoded: never admin.
        let shouting = peer_with_ou("shouting", "ROLE=admin");
        let d = decide(&ok, &req(Some(&shouting), "GET", "/_ping"), ids);
        assert!(!d.allow, "{d:?}");
        let bmp = {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(
                rcgen::DnType::OrganizationalUnitName,
                rcgen::DnValue::BmpString(
                    rcgen::string::BmpString::try_from("role=monitoring").unwrap(),
                ),
            );
            p.distinguished_name.push(rcgen::DnType::CommonName, "bmp");
            base64_encode(p.self_signed(&key).unwrap().pem().as_bytes())
        };
        let d = decide(&ok, &req(Some(&bmp), "POST", run), ids);
        assert!(!d.allow, "{d:?}");
    }

    #[test]
    fn effective_role_is_the_most_restrictive() {
        use Role::*;
        assert_eq!(Role::effective(None, None), Ok(Admin));
        assert_eq!(Role::effective(Some("operator"), None), Ok(Operator));
        assert_eq!(Role::effective(None, Some(Monitoring)), Ok(Monitoring));
        assert_eq!(Role::effective(Some("admin"), Some(Operator)), Ok(Operator));
        assert_eq!(
            Role::effective(Some("monitoring"), Some(Admin)),
            Ok(Monitoring)
        );
        assert_eq!(
            Role::effective(Some("operator"), Some(Monitoring)),
            Ok(Monitoring)
        );
        assert!(Role::effective(Some("root"), Some(Admin)).is_err());
    }

    #[test]
    fn revoke_reaches_certificates_whose_files_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            dir: dir.path().join("authz"),
            revoked: dir.path().join("authz/revoked.json"),
            roles: dir.path().join("authz/roles.json"),
            issued: dir.path().join("authz/issued.json"),
            fallback_daemon_json: dir.path().join("x"),
            fallback_sha256: dir.path().join("y"),
            fallback_script: dir.path().join("z"),
            metrics: None,
        };
        let backups = crate::files::Backups {
            dir: dir.path().join("backup"),
            retention: crate::config::parse("", Path::new("t.toml"))
                .unwrap()
                .backup,
        };
        let now = std::time::SystemTime::now();
        let cert = |cn: &str, days: i64| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.not_after = if days >= 0 {
                (now + std::time::Duration::from_secs(days as u64 * 86400)).into()
            } else {
                (now - std::time::Duration::from_secs((-days) as u64 * 86400)).into()
            };
            p.self_signed(&key).unwrap().pem()
        };
        let old = cert("ci", 30);
        let expired = cert("ci", -1);
        let other = cert("other", 30);
        // An earlier run recorded an expired certificate.
        IssuedLog::new(
            files.issued.clone(),
            &backups,
            now - std::time::Duration::from_secs(7 * 86400),
        )
        .record(expired.as_bytes())
        .unwrap();
        let mut log = IssuedLog::new(files.issued.clone(), &backups, now);
        for c in [&old, &other] {
            log.record(c.as_bytes()).unwrap();
        }
        let list = IssuedList::load(&files.issued).unwrap();
        assert_eq!(list.issued.len(), 2, "the expired entry went: {list:?}");
        assert_eq!(
            std::fs::metadata(&files.issued).unwrap().mode() & 0o777,
            0o600
        );
        // No file of "ci" anywhere: the record still names its certificate.
        let added = revoke(&files, "ci", &[], &backups, now).unwrap();
        let old_id =
            cert_id(&crate::pki::inspect::first_cert_der(old.as_bytes()).unwrap()).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].serial, old_id.serial);
        assert!(
            RevocationList::load(&files.revoked)
                .unwrap()
                .contains(&old_id)
        );
        // A line that is not a record is kept as it is; the others still count. A torn last
        // line (a crash in the middle of an append) goes at the next run.
        let text = std::fs::read_to_string(&files.issued).unwrap();
        std::fs::write(&files.issued, format!("garbage\n{text}{{\"name\":\"to")).unwrap();
        let list = IssuedList::load(&files.issued).unwrap();
        assert_eq!(
            (list.issued.len(), list.unreadable.len()),
            (2, 1),
            "{list:?}"
        );
        let third = cert("third", 30);
        IssuedLog::new(files.issued.clone(), &backups, now)
            .record(third.as_bytes())
            .unwrap();
        let after = std::fs::read_to_string(&files.issued).unwrap();
        assert!(
            after.contains("garbage\n") && !after.contains("\"to\n"),
            "{after}"
        );
        let list = IssuedList::load(&files.issued).unwrap();
        assert_eq!(
            (list.issued.len(), list.unreadable.len()),
            (3, 1),
            "{list:?}"
        );
        // Many clients in one run: one backup of the record, not one each.
        let count_backups = || {
            let mut n = 0;
            let mut stack = vec![backups.dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name() == "issued.jsonl" {
                        n += 1;
                    }
                }
            }
            n
        };
        let later = now + std::time::Duration::from_secs(60);
        let before = count_backups();
        let mut log = IssuedLog::new(files.issued.clone(), &backups, later);
        for i in 0..8 {
            log.record(cert(&format!("c{i}"), 30).as_bytes()).unwrap();
        }
        assert_eq!(IssuedList::load(&files.issued).unwrap().issued.len(), 11);
        assert!(count_backups() <= before + 1, "{} backups", count_backups());
    }

    #[test]
    fn base64_as_go_writes_it() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aA==").unwrap(), b"h");
        assert!(base64_decode("aGk").is_none());
        assert!(base64_decode("a=Gk").is_none());
        assert!(base64_decode("a*Gk").is_none());
    }
}

/// What the plugin decides on, read from the files.
#[derive(Debug, Default)]
pub struct Policy {
    revoked: HashSet<(String, String)>,
    roles: BTreeMap<String, Role>,
}

impl Policy {
    fn load(files: &Files, config: Option<&Path>) -> Result<Policy> {
        let list = RevocationList::load(&files.revoked)?;
        let mut roles = load_roles(&files.roles)?;
        let settings = crate::config::load(config).map_err(|e| anyhow::anyhow!(e.0))?;
        roles.extend(settings.authz.roles);
        Ok(Policy {
            revoked: list
                .revoked
                .into_iter()
                .map(|r| (r.serial, r.issuer_sha256))
                .collect(),
            roles,
        })
    }
}

type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The policy, read again when the revocation list, the roles or the configuration change
/// (three `stat`s per request).
pub struct Cached {
    files: Files,
    config: Option<PathBuf>,
    config_path: PathBuf,
    stamps: Vec<Stamp>,
    policy: Result<Policy, String>,
}

impl Cached {
    pub fn new(files: Files, config: Option<PathBuf>) -> Cached {
        let config_path = config
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
        Cached {
            files,
            config,
            config_path,
            stamps: vec![],
            policy: Err("not read yet".into()),
        }
    }

    pub fn get(&mut self) -> &Result<Policy, String> {
        let now = vec![
            stamp(&self.files.revoked),
            stamp(&self.files.roles),
            stamp(&self.config_path),
        ];
        if now != self.stamps || self.stamps.is_empty() {
            self.policy =
                Policy::load(&self.files, self.config.as_deref()).map_err(|e| format!("{e:#}"));
            match &self.policy {
                Ok(p) => tracing::info!(
                    revoked = p.revoked.len(),
                    roles = p.roles.len(),
                    "policy read"
                ),
                Err(e) => {
                    tracing::error!("{e}; requests over TLS are refused until it is repaired")
                }
            }
            self.stamps = now;
        }
        &self.policy
    }
}

/// The query of the probe's `GET /_ping` that asks whether dockerd consults our plugin (only
/// our plugin refuses it, with [`CONSULTED_REASON`]).
pub const CONSULTED_QUERY: &str = "docker-tls-manager-consulted";
/// The reason that answer carries (audited at info, not as a warning, and not counted).
pub const CONSULTED_REASON: &str =
    "consulted: the manager checks that dockerd asks docker-tls-manager";

/// One request, as dockerd describes it to the plugin.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthzRequest {
    #[serde(rename = "User", default)]
    pub user: String,
    #[serde(rename = "UserAuthNMethod", default)]
    pub authn: String,
    #[serde(rename = "RequestMethod", default)]
    pub method: String,
    #[serde(rename = "RequestUri", default)]
    pub uri: String,
    #[serde(rename = "RequestPeerCertificates", default)]
    pub certs: Option<Vec<String>>,
}

/// The answer and what the audit line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Over TLS (audited at info/warning), not the unix socket (debug).
    pub tls: bool,
    pub client: String,
    pub serial: String,
    pub reason: String,
}

/// Decides one request. Unix-socket requests (no user, no certificate) are always allowed;
/// over TLS the manager's probe may ping and nothing else, then a policy that cannot be read refuses, then a
/// revoked certificate is refused, then the client's role decides.
/// `ids` caches what each certificate's PEM says.
pub fn decide(
    policy: &Result<Policy, String>,
    req: &AuthzRequest,
    ids: &mut std::collections::HashMap<String, CertId>,
) -> Decision {
    let certs = req.certs.as_deref().unwrap_or_default();
    let mut d = Decision {
        allow: false,
        tls: true,
        client: req.user.clone(),
        serial: String::new(),
        reason: String::new(),
    };
    if req.authn.is_empty() && req.user.is_empty() && certs.is_empty() {
        d.tls = false;
        d.allow = true;
        d.reason = "local unix socket".into();
        return d;
    }
    let Some(leaf) = certs.first() else {
        d.reason = format!("no client certificate (authentication '{}')", req.authn);
        return d;
    };
    let id = match ids.get(leaf) {
        Some(id) => id.clone(),
        None => match pem_to_der(leaf).and_then(|der| cert_id(&der)) {
            Ok(id) => {
                ids.insert(leaf.clone(), id.clone());
                id
            }
            Err(e) => {
                d.reason = format!("client certificate unreadable: {e:#}");
                return d;
            }
        },
    };
    d.client = id.cn.clone();
    d.serial = id.serial.clone();
    if id.cn == PROBE_CN {
        // `status` and `check` asking whether dockerd consults us: refused, so they can tell.
        if req.method == "GET"
            && req.uri.split_once('?').is_some_and(|(p, q)| {
                q == CONSULTED_QUERY && roles::route_path(p).is_ok_and(|p| p == "/_ping")
            })
        {
            d.reason = CONSULTED_REASON.into();
            return d;
        }
        // Only its ping, even with a corrupt list (the manager verifies Docker with it).
        match roles::check_probe(&req.method, &req.uri) {
            Ok(()) => {
                d.allow = true;
                d.reason = "the manager's probe".into();
            }
            Err(why) => d.reason = why,
        }
        return d;
    }
    let p = match policy {
        Ok(p) => p,
        Err(e) => {
            d.reason = format!("revocation list or roles unreadable, refusing every client: {e}");
            return d;
        }
    };
    if p.revoked
        .contains(&(id.serial.clone(), id.issuer_sha256.clone()))
    {
        d.reason = format!(
            "certificate of client '{}' (serial {}) is revoked",
            id.cn, id.serial
        );
        return d;
    }
    let role = match Role::effective(id.role.as_deref(), p.roles.get(&id.cn).copied()) {
        Ok(r) => r,
        Err(why) => {
            d.reason = format!("client '{}': {why}", id.cn);
            return d;
        }
    };
    match roles::check(role, &req.method, &req.uri) {
        Ok(()) => {
            d.allow = true;
            d.reason = format!("role {role}");
        }
        Err(why) => d.reason = format!("client '{}': {why}", id.cn),
    }
    d
}

/// Every certificate of client `name` we can find: its current one and the older ones kept in
/// the backups (renewed certificates stay valid until they expire).
pub fn client_certificates(layout: &crate::pki::Layout, name: &str) -> Vec<PathBuf> {
    let current = layout
        .cert_and_key(&crate::pki::Slot::Client(name.to_string()))
        .0;
    let rel = current.strip_prefix("/").unwrap_or(&current).to_path_buf();
    let mut found = vec![current];
    let mut stack = vec![layout.backup_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.ends_with(&rel) {
                found.push(p);
            }
        }
    }
    found
}

/// Adds the certificates at `paths` whose CN is `name` to the revocation list (backed up,
/// 0600, atomic). Returns those newly revoked. A corrupt list is an error, never overwritten.
pub fn revoke(
    files: &Files,
    name: &str,
    paths: &[PathBuf],
    backups: &crate::files::Backups,
    now: std::time::SystemTime,
) -> Result<Vec<Revoked>> {
    let list = RevocationList::load(&files.revoked)?;
    let mut ids: Vec<CertId> = paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|pem| crate::pki::inspect::first_cert_der(&pem).ok())
        .filter_map(|der| cert_id(&der).ok())
        .collect();
    // Those whose files and backups are gone: the record written at signing.
    match IssuedList::load(&files.issued) {
        Ok(l) => {
            if !l.unreadable.is_empty() {
                eprintln!(
                    "warning: '{}' holds {} line(s) that are not a record of a certificate: a \
                     certificate they named may not be revoked (restore the file from the backups)",
                    files.issued.display(),
                    l.unreadable.len()
                );
            }
            ids.extend(l.issued.into_iter().map(|i| CertId {
                cn: i.name,
                role: None,
                serial: i.serial,
                issuer_sha256: i.issuer_sha256,
                issuer: i.issuer,
                not_after: i.not_after,
            }))
        }
        Err(e) => {
            tracing::warn!("{e:#}: revoking the certificates found on disk and in the backups")
        }
    }
    let mut added = vec![];
    for id in ids {
        if id.cn != name
            || list.contains(&id)
            || added
                .iter()
                .any(|r: &Revoked| r.serial == id.serial && r.issuer_sha256 == id.issuer_sha256)
        {
            continue;
        }
        added.push(Revoked {
            name: name.to_string(),
            serial: id.serial,
            issuer_sha256: id.issuer_sha256,
            issuer: id.issuer,
            not_after: id.not_after,
            revoked_at: humantime::format_rfc3339_seconds(now).to_string(),
        });
    }
    append(files, list, added, backups, now)
}

/// Adds the entries of `incoming` (another host's list) not yet in this host's (backed up,
/// 0600, atomic). Returns those added. Entries are checked first: nothing is written if one is
/// not a revocation as `revoke` writes it.
pub fn merge(
    files: &Files,
    incoming: &RevocationList,
    backups: &crate::files::Backups,
    now: std::time::SystemTime,
) -> Result<Vec<Revoked>> {
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(bad) = incoming
        .revoked
        .iter()
        .find(|r| !hex(&r.serial) || r.issuer_sha256.len() != 64 || !hex(&r.issuer_sha256))
    {
        anyhow::bail!(
            "entry for '{}' has no serial and issuer as `client revocations export` writes them",
            bad.name
        );
    }
    let list = RevocationList::load(&files.revoked)?;
    let mut added = vec![];
    for r in &incoming.revoked {
        let id = |x: &Revoked| {
            (
                x.serial.to_ascii_lowercase(),
                x.issuer_sha256.to_ascii_lowercase(),
            )
        };
        if list.revoked.iter().chain(&added).any(|x| id(x) == id(r)) {
            continue;
        }
        added.push(Revoked {
            serial: r.serial.to_ascii_lowercase(),
            issuer_sha256: r.issuer_sha256.to_ascii_lowercase(),
            ..r.clone()
        });
    }
    append(files, list, added, backups, now)
}

/// Writes `list` with `added` appended (backed up, 0600, atomic); nothing when none is new.
fn append(
    files: &Files,
    mut list: RevocationList,
    added: Vec<Revoked>,
    backups: &crate::files::Backups,
    now: std::time::SystemTime,
) -> Result<Vec<Revoked>> {
    if added.is_empty() {
        return Ok(added);
    }
    list.revoked.extend(added.iter().cloned());
    crate::files::ensure_dir(&files.dir, 0o700)?;
    crate::files::backup(&files.revoked, backups, now)?;
    let text = serde_json::to_string_pretty(&list)? + "\n";
    crate::files::atomic_write(&files.revoked, text.as_bytes(), 0o600)?;
    Ok(added)
}

/// Sets (or with `None` clears) the role `client add --role` gave a client.
pub fn set_role(
    files: &Files,
    name: &str,
    role: Option<Role>,
    backups: &crate::files::Backups,
    now: std::time::SystemTime,
) -> Result<()> {
    let mut roles = load_roles(&files.roles)?;
    let before = roles.clone();
    match role {
        Some(r) => roles.insert(name.to_string(), r),
        None => roles.remove(name),
    };
    if roles == before {
        return Ok(());
    }
    crate::files::ensure_dir(&files.dir, 0o700)?;
    crate::files::backup(&files.roles, backups, now)?;
    let text = serde_json::to_string_pretty(&roles)? + "\n";
    crate::files::atomic_write(&files.roles, text.as_bytes(), 0o600)
}

/// The role this host gives a client: the config's, else the one in `given` (`client add
/// --role`), else admin. What its certificates carry (see `Role::effective`).
pub fn wanted_role(
    settings: &crate::config::Settings,
    given: &BTreeMap<String, Role>,
    name: &str,
) -> Role {
    settings
        .authz
        .roles
        .get(name)
        .or_else(|| given.get(name))
        .copied()
        .unwrap_or(Role::Admin)
}

/// The role a client has: the config's, else the one given at `client add`, else admin
/// ([`wanted_role`], with an unreadable `roles.json` read as empty).
pub fn role_of(settings: &crate::config::Settings, files: &Files, name: &str) -> Role {
    wanted_role(
        settings,
        &load_roles(&files.roles).unwrap_or_default(),
        name,
    )
}
