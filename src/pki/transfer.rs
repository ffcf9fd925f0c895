//! Moving the CA between hosts that share one client trust (`ca export`, `ca import`).
//!
//! The export is one PEM file: a comment line, the CA certificate, and the CA key as a PKCS#8
//! `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2-HMAC-SHA256 with 600 000 iterations and a random
//! salt, AES-256-CBC). The key is never written unprotected outside `state_dir`; `openssl pkey`
//! reads the file with the same passphrase, so nothing about it is ours alone. By default the
//! passphrase is made here (25 random characters, 125 bits) and shown once: the file may go
//! through scp or a ticket, the passphrase by another channel.

use std::fmt;

use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, SecretDocument};
use zeroize::Zeroizing;

use super::inspect::{CertInfo, cert_info};

/// PBKDF2 iterations (OWASP's 2023 figure for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// What a CA export holds, checked: a CA certificate and the key that belongs to it.
pub struct CaMaterial {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    pub cert: CertInfo,
    /// The CA key, unencrypted PKCS#8 PEM (zeroed when dropped).
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("subject", &self.cert.subject)
            .finish_non_exhaustive()
    }
}

/// Why an export file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("it is not a CA export: {0}")]
    NotAnExport(String),
    #[error("the passphrase is wrong (or the file was altered)")]
    WrongPassphrase,
    #[error("the certificate in it is not a CA certificate ({0})")]
    NotACa(String),
    #[error("the key in it does not belong to its certificate")]
    KeyMismatch,
}

/// `state_dir/ca-shared.json`: the CA's public key when it was exported or imported.
#[derive(serde::Serialize, serde::Deserialize)]
struct Shared {
    public_key: String,
    since: String,
    how: String,
}

/// Records that the CA with `cert` is shared with other hosts (`how`: "export" or "import").
pub fn record_shared(
    layout: &crate::layout::Layout,
    cert: &CertInfo,
    how: &str,
) -> anyhow::Result<()> {
    let s = Shared {
        public_key: hex::encode(&cert.public_key),
        since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        how: how.into(),
    };
    crate::files::atomic_write(&layout.ca_shared(), &serde_json::to_vec_pretty(&s)?, 0o600)
}

/// The public key the CA was shared with, if recorded.
pub fn shared_key(layout: &crate::layout::Layout) -> Option<Vec<u8>> {
    let s: Shared = serde_json::from_slice(&std::fs::read(layout.ca_shared()).ok()?).ok()?;
    hex::decode(s.public_key).ok()
}

/// A new passphrase: 25 characters of the RFC 4648 base32 alphabet in groups of five.
pub fn new_passphrase() -> Zeroizing<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bytes: [u8; 25] = rand::random();
    let mut s = Zeroizing::new(String::with_capacity(29));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            s.push('-');
        }
        s.push(ALPHABET[(b & 31) as usize] as char);
    }
    s
}

/// The export text: `comment`, the CA certificate(s) as they are, the key encrypted.
pub fn seal(
    cert_pem: &str,
    key_pem: &str,
    passphrase: &str,
    comment: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let (label, key) = SecretDocument::from_pem(key_pem)
        .map_err(|e| anyhow::anyhow!("the CA key is not a PKCS#8 PEM key ({e})"))?;
    anyhow::ensure!(
        label == "PRIVATE KEY",
        "the CA key is a '{label}', not a PKCS#8 key"
    );
    let info = PrivateKeyInfo::try_from(key.as_bytes())
        .map_err(|e| anyhow::anyhow!("the CA key is not a PKCS#8 key ({e})"))?;
    let salt: [u8; 16] = rand::random();
    let iv: [u8; 16] = rand::random();
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| anyhow::anyhow!("PBES2 parameters: {e}"))?;
    let sealed = info
        .encrypt_with_params(params, passphrase.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot encrypt the CA key: {e}"))?;
    let sealed_pem = sealed
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the encrypted key: {e}"))?;
    let mut out = Zeroizing::new(String::new());
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(cert_pem.trim_end());
    out.push('\n');
    out.push_str(&sealed_pem);
    Ok(out)
}

/// Reads an export made by [`seal`] (or by hand: a CA certificate and a PKCS#8-encrypted key
/// in one PEM file), decrypts the key and checks that both belong together.
pub fn open(text: &[u8], passphrase: &str) -> Result<CaMaterial, OpenError> {
    let mut cert_der = None;
    let mut sealed = None;
    for item in x509_parser::pem::Pem::iter_from_buffer(text) {
        let item = item.map_err(|e| OpenError::NotAnExport(format!("not valid PEM ({e})")))?;
        match item.label.as_str() {
            "CERTIFICATE" if cert_der.is_none() => cert_der = Some(item.contents),
            "CERTIFICATE" => {}
            "ENCRYPTED PRIVATE KEY" => sealed = Some(item.contents),
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
                return Err(OpenError::NotAnExport(
                    "its key is not encrypted; make it with `docker-tls-manager ca export`".into(),
                ));
            }
            other => {
                return Err(OpenError::NotAnExport(format!(
                    "unexpected PEM block '{other}'"
                )));
            }
        }
    }
    let cert_der = cert_der.ok_or_else(|| OpenError::NotAnExport("no certificate".into()))?;
    let sealed = sealed.ok_or_else(|| OpenError::NotAnExport("no encrypted key".into()))?;
    let cert = cert_info(&cert_der).map_err(OpenError::NotAnExport)?;
    if !cert.is_ca {
        return Err(OpenError::NotACa("basicConstraints CA:TRUE missing".into()));
    }
    let info = EncryptedPrivateKeyInfo::try_from(sealed.as_slice())
        .map_err(|e| OpenError::NotAnExport(format!("the key block is not PKCS#8 ({e})")))?;
    let key = info
        .decrypt(passphrase.as_bytes())
        .map_err(|_| OpenError::WrongPassphrase)?;
    let key_pem = Zeroizing::new(
        key.to_pem("PRIVATE KEY", LineEnding::LF)
            .map_err(|e| OpenError::NotAnExport(format!("the decrypted key: {e}")))?
            .to_string(),
    );
    let kp = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| OpenError::NotAnExport(format!("the decrypted key is not usable ({e})")))?;
    if kp.public_key_raw() != cert.public_key.as_slice() {
        return Err(OpenError::KeyMismatch);
    }
    let cert_pem = pem_of(&cert_der);
    Ok(CaMaterial {
        cert_pem,
        cert,
        key_pem,
    })
}

/// A certificate as PEM.
pub fn pem_of(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der)
        .expect("PEM encoding of a certificate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyType;
    use crate::pki::issue;

    fn ca() -> (String, String) {
        let kp = issue::generate_key(KeyType::EcdsaP256).unwrap();
        let params = issue::ca_params(
            "test CA",
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(86400),
        );
        let cert = params.self_signed(&kp).unwrap();
        (cert.pem(), kp.serialize_pem())
    }

    #[test]
    fn sealed_export_opens_with_its_passphrase_only() {
        let (cert, key) = ca();
        let pass = new_passphrase();
        let text = seal(&cert, &key, &pass, "from host a\nsecond line").unwrap();
        assert!(text.starts_with("# from host a\n# second line\n-----BEGIN CERTIFICATE-----"));
        assert!(text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(!text.contains("-----BEGIN PRIVATE KEY-----"));
        let m = open(text.as_bytes(), &pass).unwrap();
        assert!(m.cert.subject.ends_with("CN=test CA"), "{}", m.cert.subject);
        assert_eq!(
            rcgen::KeyPair::from_pem(&m.key_pem)
                .unwrap()
                .serialize_der(),
            rcgen::KeyPair::from_pem(&key).unwrap().serialize_der()
        );
        assert_eq!(
            open(text.as_bytes(), "wrong").unwrap_err(),
            OpenError::WrongPassphrase
        );
    }

    #[test]
    fn exports_that_do_not_belong_together_are_refused() {
        let (cert, _) = ca();
        let (_, other_key) = ca();
        let pass = "p";
        let text = seal(&cert, &other_key, pass, "x").unwrap();
        assert_eq!(
            open(text.as_bytes(), pass).unwrap_err(),
            OpenError::KeyMismatch
        );
        // An unencrypted key is refused outright.
        let (cert, key) = ca();
        let plain = format!("{cert}{key}");
        assert!(matches!(
            open(plain.as_bytes(), pass).unwrap_err(),
            OpenError::NotAnExport(m) if m.contains("not encrypted")
        ));
        assert!(matches!(
            open(b"hello", pass).unwrap_err(),
            OpenError::NotAnExport(_)
        ));
    }

    #[test]
    fn passphrases_are_long_and_differ() {
        let a = new_passphrase();
        let b = new_passphrase();
        assert_eq!(a.len(), 29);
        assert_ne!(*a, *b);
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_uppercase() || c.is_ascii_digit())
        );
    }
}
