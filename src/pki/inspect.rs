//! Reads what is on disk: certificates with x509-parser, keys with rcgen, file modes. Never
//! writes; the planner decides from what this returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{Layout, Slot};
use crate::config::KeyType;
use crate::files::mode_of;
use crate::layout::{CERT_MODE, KEY_DIR_MODE, KEY_MODE};

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// What a parsed certificate says.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    /// The subject and issuer names as encoded (DER), compared byte for byte as Go does.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    /// Subject and authority key identifiers: OpenSSL only takes a CA as a leaf's issuer if
    /// its subject key identifier equals the leaf's authority key identifier.
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    pub common_name: String,
    /// The role a client certificate carries (subject OU `role=NAME`, see `authz::Role`).
    pub role: Option<String>,
    pub sans: BTreeSet<San>,
    /// Colon-separated hex, as openssl prints it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key_type: Option<KeyType>,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Raw subject public key (the SPKI bit string), to match against the key file.
    pub public_key: Vec<u8>,
    pub der: Vec<u8>,
    /// The RFC 9773 §4.1 identifier (base64url of the authority key identifier, a dot,
    /// base64url of the serial's DER content), for ACME renewal information; `None` without
    /// an authority key identifier.
    pub ari_id: Option<String>,
}

/// The state of a key file.
#[derive(Clone, Debug)]
pub enum KeyState {
    Missing,
    /// Exists but cannot be read or parsed; the message says why.
    Unreadable(String),
    Readable {
        public_key: Vec<u8>,
    },
}

impl KeyState {
    pub fn public_key(&self) -> Option<Vec<u8>> {
        match self {
            KeyState::Readable { public_key } => Some(public_key.clone()),
            _ => None,
        }
    }
}

/// The state of a certificate file.
#[derive(Clone, Debug)]
pub enum CertState {
    Missing,
    Unparsable(String),
    Present(Box<CertInfo>),
}

/// One slot as found on disk.
#[derive(Clone, Debug)]
pub struct SlotObservation {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert: CertState,
    pub key: KeyState,
    /// The certificate's signature verifies with the current CA certificate's key.
    pub signed_by_ca: bool,
    /// A leaf's signature verifies with the CA key file (whatever ca.pem holds).
    pub signed_by_ca_key: bool,
    /// Files and directories whose mode differs from what it must be: (path, wanted, found).
    pub wrong_modes: Vec<(PathBuf, u32, u32)>,
    /// For clients: their copy of the CA certificate equals the current one.
    pub ca_copy_current: bool,
}

impl SlotObservation {
    pub fn info(&self) -> Option<&CertInfo> {
        match &self.cert {
            CertState::Present(i) => Some(i),
            _ => None,
        }
    }
}

/// Everything the planner needs to know about the disk.
#[derive(Clone, Debug, Default)]
pub struct DiskState {
    pub slots: BTreeMap<Slot, SlotObservation>,
    /// The CA subject recorded when the CA certificate was last written.
    pub ca_record: Option<CaRecord>,
    /// Issuers named by the leaves on disk whose signature verifies with the CA key file: what
    /// the CA's name was, should ca.pem and the record be lost.
    pub ca_key_issuers: Vec<CaName>,
    /// The costly checks of this inspection, to remember (`Memo::save`).
    pub memo: Memo,
    /// A CA key rollover's files (see `pki::rollover`).
    pub rollover: super::rollover::Observed,
    /// The roles `client add --role` gave (`authz/roles.json`); `None` when unreadable (no
    /// client is then reissued for its role).
    pub client_roles: Option<BTreeMap<String, crate::authz::Role>>,
    /// What the ACME CA said about renewing the server certificate (`ari`), if recorded.
    pub acme_renewal: Option<crate::ari::Record>,
}

/// Results of the elliptic-curve and RSA work of an inspection (a private key's public key, a
/// signature that verifies), keyed by the SHA-256 of exactly the bytes they depend on, so that
/// reading 1000 unchanged identities costs hashing, not key arithmetic. Kept in
/// `state_dir/check-memo.json` (0600) by the convergence; read by every inspection.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memo {
    /// sha256(key file) -> hex public key.
    keys: BTreeMap<String, String>,
    /// sha256(certificate DER) + sha256(the signer's certificate or SubjectPublicKeyInfo DER),
    /// for signatures that verify.
    signed: BTreeSet<String>,
    #[serde(skip)]
    used: Memoised,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Memoised {
    keys: BTreeMap<String, String>,
    signed: BTreeSet<String>,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Memo {
    pub fn load(layout: &Layout) -> Memo {
        std::fs::read(layout.check_memo())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes what this inspection used or computed (so entries of files gone are dropped),
    /// if that differs from the file; best effort.
    pub fn save(&self, layout: &Layout) {
        let keep = Memo {
            keys: self.used.keys.clone(),
            signed: self.used.signed.clone(),
            used: Memoised::default(),
        };
        if keep.keys == self.keys && keep.signed == self.signed {
            return;
        }
        if let Ok(json) = serde_json::to_vec(&keep) {
            let _ = crate::files::atomic_write(&layout.check_memo(), &json, KEY_MODE);
        }
    }

    fn key(&mut self, text: &str, compute: impl FnOnce() -> KeyState) -> KeyState {
        let h = sha(text.as_bytes());
        if let Some(hex_pk) = self.keys.get(&h)
            && let Ok(public_key) = hex::decode(hex_pk)
        {
            self.used.keys.insert(h, hex_pk.clone());
            return KeyState::Readable { public_key };
        }
        let st = compute();
        if let KeyState::Readable { public_key } = &st {
            self.used.keys.insert(h, hex::encode(public_key));
        }
        st
    }

    fn signed(&mut self, cert_der: &[u8], spki_der: &[u8], verify: impl FnOnce() -> bool) -> bool {
        let k = format!("{}{}", sha(cert_der), sha(spki_der));
        if self.signed.contains(&k) || verify() {
            self.used.signed.insert(k);
            return true;
        }
        false
    }
}

/// What a leaf names its issuer by, and so what a re-signed CA must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaName {
    /// The DER-encoded subject Name.
    pub subject_der: Vec<u8>,
    /// The subject key identifier, if the CA has one.
    pub key_id: Option<Vec<u8>>,
}

/// `state_dir/ca-subject.json`: the CA's subject (exact DER) and the public key it belongs to,
/// so a CA re-signed without its certificate keeps the name every leaf and bundle names as
/// issuer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaRecord {
    /// For humans only.
    pub subject: String,
    /// Hex of the DER-encoded Name.
    pub subject_der: String,
    /// Hex of the subject key identifier, if any.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Hex of the raw public key of the CA key (as in [`CertInfo::public_key`]).
    pub public_key: String,
}

impl CaRecord {
    pub fn of(info: &CertInfo) -> CaRecord {
        CaRecord {
            subject: info.subject.clone(),
            subject_der: hex::encode(&info.subject_der),
            key_id: info.subject_key_id.as_ref().map(hex::encode),
            public_key: hex::encode(&info.public_key),
        }
    }

    /// The recorded name, if it belongs to the key `public_key`.
    pub fn name_for(&self, public_key: &[u8]) -> Option<CaName> {
        if hex::decode(&self.public_key).ok()? != public_key {
            return None;
        }
        Some(CaName {
            subject_der: hex::decode(&self.subject_der).ok()?,
            key_id: match &self.key_id {
                Some(k) => Some(hex::decode(k).ok()?),
                None => None,
            },
        })
    }
}

impl DiskState {
    pub fn get(&self, slot: &Slot) -> &SlotObservation {
        &self.slots[slot]
    }
}

/// Reads every slot: the CA, the server, each of `clients`, and the probe identity if asked.
pub fn inspect(layout: &Layout, clients: &[String], probe: bool) -> DiskState {
    let mut slots = vec![Slot::Ca, Slot::Server];
    slots.extend(clients.iter().cloned().map(Slot::Client));
    if probe {
        slots.push(Slot::Probe);
    }
    let ca_pem = std::fs::read(layout.ca_cert()).ok();
    let ca_der = ca_pem.as_deref().and_then(|p| first_cert_der(p).ok());
    let spki = ca_key_spki(layout);
    // When ca.pem holds the CA key (the usual case), a leaf it verifies is signed with the key:
    // one signature check per certificate, not two (status over 1000 clients).
    let ca_holds_key = match (&ca_der, &spki) {
        (Some(der), Some(k)) => X509Certificate::from_der(der)
            .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == k.as_slice()),
        _ => false,
    };
    let mut memo = Memo::load(layout);
    let trust = server_trust(layout, ca_pem.as_deref());
    let mut out = BTreeMap::new();
    for slot in slots {
        let mut obs = observe(
            layout,
            &slot,
            ca_der.as_deref(),
            trust.as_deref(),
            &mut memo,
        );
        obs.signed_by_ca_key = slot != Slot::Ca
            && ((ca_holds_key && obs.signed_by_ca)
                || matches!((&obs.cert, &spki), (CertState::Present(i), Some(k))
                    if memo.signed(&i.der, k, || signed_with_key(&i.der, k))));
        out.insert(slot, obs);
    }
    let ca_record = std::fs::read(layout.ca_subject_record())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let rollover = super::rollover::inspect(
        layout,
        ca_der.as_deref(),
        &layout.cert_and_key(&Slot::Server).0,
    );
    DiskState {
        ca_key_issuers: ca_key_issuers(layout, &out, spki.as_deref()),
        slots: out,
        ca_record,
        acme_renewal: crate::ari::read(&layout.acme_renewal_info()),
        memo,
        rollover,
        client_roles: crate::authz::policy::load_roles(&layout.authz_roles()).ok(),
    }
}

/// The SubjectPublicKeyInfo (DER) of the CA key file, if it can be read.
fn ca_key_spki(layout: &Layout) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(layout.ca_key()).ok()?;
    let key = rcgen::KeyPair::from_pem(&text).ok()?;
    Some(rcgen::PublicKeyData::subject_public_key_info(&key))
}

/// Whether `cert_der`'s signature verifies with the public key `spki_der`.
fn signed_with_key(cert_der: &[u8], spki_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, spki))) = (
        X509Certificate::from_der(cert_der),
        x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(&spki)).is_ok()
}

/// Issuer names of the leaves on disk signed with the CA key (the probe's too, inspected or
/// not).
fn ca_key_issuers(
    layout: &Layout,
    slots: &BTreeMap<Slot, SlotObservation>,
    ca_key_spki: Option<&[u8]>,
) -> Vec<CaName> {
    let issuer = |i: &CertInfo| CaName {
        subject_der: i.issuer_der.clone(),
        key_id: i.authority_key_id.clone(),
    };
    let mut issuers: Vec<CaName> = slots
        .values()
        .filter(|o| o.signed_by_ca_key)
        .filter_map(|o| o.info().map(issuer))
        .collect();
    if let (false, Some(spki)) = (slots.contains_key(&Slot::Probe), ca_key_spki)
        && let Some(i) = read_cert_info(&layout.cert_and_key(&Slot::Probe).0)
        && signed_with_key(&i.der, spki)
    {
        issuers.push(issuer(&i));
    }
    issuers.dedup();
    issuers
}

/// What clients (and the probe) trust for the server, as their copy must hold it: the ACME
/// CA's root with `[acme]`, else our current CA (ca.pem's first certificate: during a rollover
/// it also holds the previous one).
pub fn server_trust(layout: &Layout, ca_pem: Option<&[u8]>) -> Option<Vec<u8>> {
    match &layout.acme_issuer_root {
        Some(root) => std::fs::read(root).ok(),
        None => ca_pem.map(|p| super::rollover::first_block(p).to_vec()),
    }
}

/// Whether `chain_pem` (leaf first, then intermediates) verifies up to the root `root_pem`:
/// each certificate signed by the next, the last by the root.
pub fn chain_verifies(chain_pem: &[u8], root_pem: &[u8]) -> bool {
    let ders = |pem: &[u8]| -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem)
            .filter_map(|p| p.ok())
            .filter(|p| p.label == "CERTIFICATE")
            .map(|p| p.contents)
            .collect()
    };
    let mut chain = ders(chain_pem);
    let Some(root) = ders(root_pem).into_iter().next() else {
        return false;
    };
    if chain.is_empty() {
        return false;
    }
    chain.push(root);
    chain.windows(2).all(|w| verify_signed_by(&w[0], &w[1]))
}

fn observe(
    layout: &Layout,
    slot: &Slot,
    ca_der: Option<&[u8]>,
    trust: Option<&[u8]>,
    memo: &mut Memo,
) -> SlotObservation {
    let (cert_path, key_path) = layout.cert_and_key(slot);
    let cert = match std::fs::read(&cert_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CertState::Missing,
        Err(e) => CertState::Unparsable(format!("cannot read: {e}")),
        Ok(data) => match first_cert_der(&data).and_then(|der| cert_info(&der)) {
            Ok(info) => CertState::Present(Box::new(info)),
            Err(e) => CertState::Unparsable(e),
        },
    };
    let key = match std::fs::read_to_string(&key_path) {
        Ok(text) => memo.key(&text, || key_state(&key_path, &text)),
        Err(_) => read_key(&key_path),
    };
    let signed_by_ca = match (&cert, ca_der) {
        // From the ACME CA: the chain in the file up to its root.
        (CertState::Present(_), _)
            if *slot == Slot::Server && layout.acme_issuer_root.is_some() =>
        {
            match (std::fs::read(&cert_path), trust) {
                (Ok(chain), Some(root)) => chain_verifies(&chain, root),
                _ => false,
            }
        }
        (CertState::Present(info), Some(ca)) => {
            memo.signed(&info.der, ca, || verify_signed_by(&info.der, ca))
        }
        _ => false,
    };
    let mut wrong_modes = Vec::new();
    let mut check = |p: &Path, want: u32| {
        if let Some(have) = mode_of(p)
            && have != want
        {
            wrong_modes.push((p.to_path_buf(), want, have));
        }
    };
    for d in layout.key_dirs(slot) {
        check(&d, KEY_DIR_MODE);
    }
    check(&cert_path, CERT_MODE);
    check(&key_path, KEY_MODE);
    let mut ca_copy_current = true;
    if let Some(copy) = layout.ca_copy(slot) {
        check(&copy, CERT_MODE);
        // The copy holds what clients trust for the server (see `server_trust`).
        ca_copy_current = match (std::fs::read(&copy), trust) {
            (Ok(have), Some(want)) => have == want,
            _ => false,
        };
    }
    wrong_modes.dedup();
    SlotObservation {
        cert_path,
        key_path,
        cert,
        key,
        signed_by_ca,
        signed_by_ca_key: false,
        wrong_modes,
        ca_copy_current,
    }
}

/// Reads a private key (PKCS#8 PEM) and returns its raw public key.
pub fn read_key(path: &Path) -> KeyState {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyState::Missing,
        Err(e) => KeyState::Unreadable(format!("cannot read '{}': {e}", path.display())),
        Ok(text) => key_state(path, &text),
    }
}

fn key_state(path: &Path, text: &str) -> KeyState {
    match rcgen::KeyPair::from_pem(text) {
        Ok(kp) => KeyState::Readable {
            public_key: kp.public_key_raw().to_vec(),
        },
        Err(e) => KeyState::Unreadable(format!(
            "'{}' is not an unencrypted PKCS#8 PEM private key ({e})",
            path.display()
        )),
    }
}

/// The DER of the first CERTIFICATE block in a PEM file.
pub fn first_cert_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| format!("not valid PEM: {e}"))?;
        if item.label == "CERTIFICATE" {
            return Ok(item.contents);
        }
    }
    Err("no CERTIFICATE block in the file".into())
}

fn time_of(t: x509_parser::time::ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

/// Parses a DER certificate into what we need to know about it.
/// The role a certificate's subject carries: its OU `role=NAME` (see `authz::Role::ou`). What
/// is not exactly one such OU, readable, comes back as a name no role has (the plugin then
/// refuses): several of them, `Role=...` in another case, an OU that cannot be decoded.
pub fn role_in_subject(subject: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let prefix = crate::authz::ROLE_OU_PREFIX;
    let mut found: Vec<String> = vec![];
    for ou in subject.iter_organizational_unit() {
        match ou.as_str() {
            Ok(v)
                if v.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix)) =>
            {
                found.push(v.strip_prefix(prefix).unwrap_or(v).to_string());
            }
            Ok(_) => {}
            Err(_) => found.push("(an OU that cannot be decoded)".into()),
        }
    }
    match found.len() {
        0 | 1 => found.pop(),
        _ => Some(found.join(" and ")),
    }
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, x) = X509Certificate::from_der(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let common_name = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let role = role_in_subject(x.subject());
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = x.subject_alternative_name() {
        for gn in &ext.value.general_names {
            match gn {
                GeneralName::DNSName(d) => {
                    sans.insert(San::Dns(d.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                        _ => continue,
                    };
                    sans.insert(San::Ip(ip));
                }
                _ => {}
            }
        }
    }
    let (server_auth, client_auth) = match x.extended_key_usage() {
        Ok(Some(e)) => (
            e.value.server_auth || e.value.any,
            e.value.client_auth || e.value.any,
        ),
        _ => (false, false),
    };
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => subject_key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    let spki = x.public_key();
    let key_type = if spki.algorithm.algorithm == OID_SIG_ED25519 {
        Some(KeyType::Ed25519)
    } else {
        match spki.parsed() {
            Ok(PublicKey::EC(ec)) => match ec.key_size() {
                256 => Some(KeyType::EcdsaP256),
                384 => Some(KeyType::EcdsaP384),
                _ => None,
            },
            Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
                2048 => Some(KeyType::Rsa2048),
                3072 => Some(KeyType::Rsa3072),
                4096 => Some(KeyType::Rsa4096),
                _ => None,
            },
            _ => None,
        }
    };
    Ok(CertInfo {
        subject: x.subject().to_string(),
        subject_der: x.subject().as_raw().to_vec(),
        issuer_der: x.issuer().as_raw().to_vec(),
        subject_key_id,
        authority_key_id: authority_key_id.clone(),
        common_name,
        role,
        sans,
        serial: x.raw_serial_as_string(),
        not_before: time_of(x.validity().not_before),
        not_after: time_of(x.validity().not_after),
        key_type,
        is_ca: x.is_ca(),
        server_auth,
        client_auth,
        fingerprint: hex::encode(Sha256::digest(der)),
        public_key: spki.subject_public_key.data.to_vec(),
        der: der.to_vec(),
        ari_id: authority_key_id
            .as_ref()
            .map(|aki| ari_id(aki, x.tbs_certificate.raw_serial())),
    })
}

/// The RFC 9773 §4.1 certificate identifier: base64url(keyIdentifier) "." base64url(the
/// serial's DER content octets).
pub fn ari_id(authority_key_id: &[u8], raw_serial: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(authority_key_id),
        b64.encode(raw_serial)
    )
}

/// Whether `cert_der`'s signature verifies with the key of `ca_der`.
pub fn verify_signed_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The parsed first certificate of a PEM file, if it can be read.
pub fn read_cert_info(path: &Path) -> Option<CertInfo> {
    let data = std::fs::read(path).ok()?;
    cert_info(&first_cert_der(&data).ok()?).ok()
}

/// A self-signed certificate for tests elsewhere: its DER and key.
#[cfg(test)]
pub fn test_cert() -> (Vec<u8>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().to_vec(), key.serialize_pem())
}

#[cfg(test)]
mod fuzz {
    //! Property tests: reading certificates and keys from arbitrary or mutated bytes never
    //! panics; it is an error the planner turns into a reissue.
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        (cert.der().to_vec(), key.serialize_pem())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = first_cert_der(&data);
            let _ = cert_info(&data);
        }

        #[test]
        fn mutated_certificates(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let (der, _) = sample();
            let mut m = der.clone();
            for (i, b) in flips {
                let i = i.index(m.len());
                m[i] ^= b;
            }
            let _ = cert_info(&m);
            let _ = verify_signed_by(&m, &der);
            let _ = cert_info(&der[..cut.index(der.len())]);
            let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", String::from_utf8_lossy(&m));
            let _ = first_cert_der(pem.as_bytes());
        }

        #[test]
        fn mutated_keys(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let (_, key) = sample();
            let mut k = key.into_bytes();
            for (i, b) in flips {
                let i = i.index(k.len());
                k[i] ^= b;
            }
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("key.pem");
            std::fs::write(&p, &k).unwrap();
            let _ = read_key(&p);
        }
    }
}
