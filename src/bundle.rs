//! Client bundles: a tar.gz of `ca.pem`, `cert.pem`, `key.pem` (for `~/.docker`,
//! `DOCKER_CERT_PATH` and Portainer's three upload fields), and the archive format that
//! `docker context import` reads (`meta.json` plus `tls/docker/*.pem`).

use anyhow::Result;
use flate2::Compression;
use flate2::write::GzEncoder;

/// The three PEM files of a client identity.
pub struct ClientFiles {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
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

    #[test]
    fn context_meta_is_what_docker_exports() {
        let m: serde_json::Value =
            serde_json::from_str(&context_meta("h", "tcp://h:2376")).unwrap();
        assert_eq!(m["Endpoints"]["docker"]["Host"], "tcp://h:2376");
        assert_eq!(m["Endpoints"]["docker"]["SkipTLSVerify"], false);
    }
}
