//! The real check that Docker serves what we issued: a mutual-TLS handshake with the manager's
//! own probe identity, `GET /_ping` answered `OK`, and the SHA-256 of the served certificate.

#![allow(async_fn_in_trait)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

use super::daemon::parse_http;

pub trait Prober {
    /// Where the probe connects.
    fn addr(&self) -> SocketAddr;
    /// One attempt: handshake, `/_ping`; returns the served certificate's SHA-256 (hex).
    async fn probe(&self) -> Result<String>;
}

/// Probes `addr` as a client of our CA.
#[derive(Clone, Debug)]
pub struct TlsProbe {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With `[acme]`: the server certificate on disk, whose first name the served one must
    /// carry (the ACME CA's certificates have no `localhost`, which ours always have).
    pub name_from: Option<PathBuf>,
}

impl TlsProbe {
    fn probe_blocking(&self) -> Result<String> {
        let (status, body, fingerprint) = self.get_blocking("/_ping")?;
        if status != 200 || body != b"OK" {
            bail!(
                "/_ping answered HTTP {status} '{}'",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(fingerprint)
    }

    /// Whether dockerd consults our authorization plugin now: the probe's
    /// `GET /_ping?docker-tls-manager-consulted`, which only our plugin refuses. dockerd's
    /// `GET /info` cannot tell: its `Plugins.Authorization` is the list dockerd started with,
    /// not updated by the reload that adds or removes ours (dockerd 20.10, seen in the machine).
    pub fn consulted_blocking(&self) -> Result<bool> {
        use crate::authz::{PLUGIN_NAME, policy::CONSULTED_QUERY};
        let (status, body, _) = self.get_blocking(&format!("/_ping?{CONSULTED_QUERY}"))?;
        let body = String::from_utf8_lossy(&body);
        match status {
            200 => Ok(false),
            403 if body.contains(&format!("authorization denied by plugin {PLUGIN_NAME}:")) => {
                Ok(true)
            }
            _ => bail!("dockerd answered HTTP {status}: {}", body.trim()),
        }
    }

    /// One mutual-TLS `GET path`: (status, body, SHA-256 of the served certificate).
    fn get_blocking(&self, path: &str) -> Result<(u16, Vec<u8>, String)> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| format!("cannot read '{}'", self.ca.display()))?
        {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("cannot read '{}'", self.cert.display()))?
            .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("cannot read '{}'", self.key.display()))?;
        // The provider named: `builder()` panics if a dependency ever enables a second one.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        let name = match &self.name_from {
            None => ServerName::try_from("localhost")?,
            Some(server_cert) => {
                let info = crate::pki::inspect::read_cert_info(server_cert)
                    .with_context(|| format!("cannot read '{}'", server_cert.display()))?;
                match info.sans.iter().next() {
                    Some(crate::pki::inspect::San::Ip(ip)) => ServerName::IpAddress((*ip).into()),
                    Some(crate::pki::inspect::San::Dns(d)) => ServerName::try_from(d.clone())?,
                    None => anyhow::bail!("'{}' names no host", server_cert.display()),
                }
            }
        };
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .with_context(|| format!("TLS handshake with {} failed", self.addr))?;
        let mut resp = Vec::new();
        match tls.read_to_end(&mut resp) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading {path} from {} failed", self.addr));
            }
        }
        let served = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no server certificate")?;
        let fingerprint = hex::encode(Sha256::digest(served.as_ref()));
        let (status, body) = parse_http(&resp)?;
        Ok((status, body.to_vec(), fingerprint))
    }
}

impl Prober for TlsProbe {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    async fn probe(&self) -> Result<String> {
        let p = self.clone();
        tokio::task::spawn_blocking(move || p.probe_blocking()).await?
    }
}
