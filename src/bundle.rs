//! Client bundles: a tar.gz of `ca.pem`, `cert.pem`, `key.pem` (for `~/.docker`,
//! `DOCKER_CERT_PATH` and Portainer's three upload fields), and the archive format that
//! `docker context import` reads (`meta.json` plus `tls/docker/*.pem`), and the check that
//! the three files belong together before they go out.

use std::time::SystemTime;

use anyhow::Result;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::pki::inspect;

/// The three PEM files of a client identity.
pub struct ClientFiles {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Why a client's three files must not go out together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    CertUnreadable(String),
    KeyUnreadable(String),
    /// The key is not the certificate's (e.g. read halfway through a renewal).
    KeyMismatch,
    /// The certificate is not signed by the CA Docker trusts now.
    NotSignedByCa,
    /// The CA copy in the bundle is not the current CA certificate.
    StaleCaCopy,
    Expired(SystemTime),
    NotYetValid(SystemTime),
}

/// Checks that `files` form a working identity against `current_ca` (the CA certificate
/// Docker trusts) at `now`: the key is the certificate's, the certificate is signed by the
/// current CA and valid now, and the CA copy is the current one.
/// `current_ca`: ca.pem (our CA, which signs client certificates); `server_trust`: what the
/// copy must hold (our current CA, or the ACME CA's root with `[acme]`).
pub fn check(
    files: &ClientFiles,
    current_ca: &[u8],
    server_trust: &[u8],
    now: SystemTime,
) -> Result<(), Unfit> {
    let cert = inspect::first_cert_der(&files.cert)
        .and_then(|der| inspect::cert_info(&der))
        .map_err(Unfit::CertUnreadable)?;
    let key = std::str::from_utf8(&files.key)
        .map_err(|e| e.to_string())
        .and_then(|t| rcgen::KeyPair::from_pem(t).map_err(|e| e.to_string()))
        .map_err(|e| {
            Unfit::KeyUnreadable(format!("not an unencrypted PKCS#8 PEM private key ({e})"))
        })?;
    if key.public_key_raw() != cert.public_key.as_slice() {
        return Err(Unfit::KeyMismatch);
    }
    let signed = inspect::first_cert_der(current_ca)
        .is_ok_and(|ca| inspect::verify_signed_by(&cert.der, &ca));
    if !signed {
        return Err(Unfit::NotSignedByCa);
    }
    if files.ca != server_trust {
        return Err(Unfit::StaleCaCopy);
    }
    if now >= cert.not_after {
        return Err(Unfit::Expired(cert.not_after));
    }
    if now < cert.not_before {
        return Err(Unfit::NotYetValid(cert.not_before));
    }
    Ok(())
}

fn append(
    tar: &mut tar::Builder<impl std::io::Write>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn append_dir(tar: &mut tar::Builder<impl std::io::Write>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o700);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// `ca.pem`, `cert.pem`, `key.pem` at the top of a gzip'd tar.
pub fn tar_gz(files: &ClientFiles) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    append(&mut tar, "ca.pem", &files.ca, 0o644)?;
    append(&mut tar, "cert.pem", &files.cert, 0o644)?;
    append(&mut tar, "key.pem", &files.key, 0o600)?;
    Ok(tar.into_inner()?.finish()?)
}

/// The `meta.json` of a docker context pointing at `host_url` (e.g. `tcp://h:2376`).
pub fn context_meta(context_name: &str, host_url: &str) -> String {
    serde_json::json!({
        "Name": context_name,
        "Metadata": { "Description": format!("Docker on {host_url}, mutual TLS by docker-tls-manager") },
        "Endpoints": { "docker": { "Host": host_url, "SkipTLSVerify": false } },
    })
    .to_string()
}

/// A plain tar in the layout of `docker context export`.
pub fn context_archive(files: &ClientFiles, context_name: &str, host_url: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append(
        &mut tar,
        "meta.json",
        context_meta(context_name, host_url).as_bytes(),
        0o644,
    )?;
    append_dir(&mut tar, "tls")?;
    append_dir(&mut tar, "tls/docker")?;
    append(&mut tar, "tls/docker/ca.pem", &files.ca, 0o600)?;
    append(&mut tar, "tls/docker/cert.pem", &files.cert, 0o600)?;
    append(&mut tar, "tls/docker/key.pem", &files.key, 0o600)?;
    Ok(tar.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn files() -> ClientFiles {
        ClientFiles {
            ca: b"CA".to_vec(),
            cert: b"CERT".to_vec(),
            key: b"KEY".to_vec(),
        }
    }

    #[test]
    fn tar_gz_has_three_files_with_modes() {
        let data = tar_gz(&files()).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
        let mut seen = vec![];
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            seen.push((
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
                s,
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("ca.pem".into(), 0o644, "CA".into()),
                ("cert.pem".into(), 0o644, "CERT".into()),
                ("key.pem".into(), 0o600, "KEY".into())
            ]
        );
    }

    /// A CA and a client identity it signed, valid for a day from `now`.
    fn identity(now: SystemTime) -> (Vec<u8>, ClientFiles) {
        use crate::config::KeyType;
        use crate::pki::issue;
        let day = std::time::Duration::from_secs(86400);
        let ca_key = issue::generate_key(KeyType::EcdsaP256).unwrap();
        let ca = issue::ca_params("ca", now, day * 10)
            .self_signed(&ca_key)
            .unwrap()
            .pem();
        let key = issue::generate_key(KeyType::EcdsaP256).unwrap();
        let params = issue::leaf_params(issue::Leaf::Client { role: None }, "c", now, day).unwrap();
        let cert = issue::sign(&params, &key, &ca, ca_key).unwrap();
        let files = ClientFiles {
            ca: ca.clone().into_bytes(),
            cert: cert.into_bytes(),
            key: key.serialize_pem().into_bytes(),
        };
        (ca.into_bytes(), files)
    }

    #[test]
    fn check_finds_what_keeps_an_identity_from_working() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let (ca, files) = identity(now);
        assert_eq!(check(&files, &ca, &ca, now), Ok(()));
        let (other_ca, other) = identity(now);
        let swapped = ClientFiles {
            key: other.key.clone(),
            ..identity_clone(&files)
        };
        assert_eq!(check(&swapped, &ca, &ca, now), Err(Unfit::KeyMismatch));
        assert_eq!(check(&other, &ca, &ca, now), Err(Unfit::NotSignedByCa));
        let stale = ClientFiles {
            ca: other_ca,
            ..identity_clone(&files)
        };
        assert_eq!(check(&stale, &ca, &ca, now), Err(Unfit::StaleCaCopy));
        let later = now + std::time::Duration::from_secs(2 * 86400);
        assert!(matches!(
            check(&files, &ca, &ca, later),
            Err(Unfit::Expired(_))
        ));
        let earlier = now - std::time::Duration::from_secs(86400);
        assert!(matches!(
            check(&files, &ca, &ca, earlier),
            Err(Unfit::NotYetValid(_))
        ));
        let garbled = ClientFiles {
            key: b"garbage".to_vec(),
            ..identity_clone(&files)
        };
        assert!(matches!(
            check(&garbled, &ca, &ca, now),
            Err(Unfit::KeyUnreadable(_))
        ));
        let garbled = ClientFiles {
            cert: b"garbage".to_vec(),
            ..identity_clone(&files)
        };
        assert!(matches!(
            check(&garbled, &ca, &ca, now),
            Err(Unfit::CertUnreadable(_))
        ));
    }

    fn identity_clone(f: &ClientFiles) -> ClientFiles {
        ClientFiles {
            ca: f.ca.clone(),
            cert: f.cert.clone(),
            key: f.key.clone(),
        }
    }

    #[test]
    fn context_meta_is_what_docker_exports() {
        let m: serde_json::Value =
            serde_json::from_str(&context_meta("h", "tcp://h:2376")).unwrap();
        assert_eq!(m["Endpoints"]["docker"]["Host"], "tcp://h:2376");
        assert_eq!(m["Endpoints"]["docker"]["SkipTLSVerify"], false);
    }
}
