//! ACME (RFC 8555) for the server certificate, through instant-acme: the account (created once,
//! its credentials kept in `state_dir/acme-account.json`, 0600), one order for the host's names
//! and addresses, the HTTP-01 challenge answered on `[acme] http_port` by a small responder
//! that lives only as long as the order, and finalisation with a CSR for a key made here (the
//! key never leaves the host). Errors name the cause and the config key to look at.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::{AcmeChallenge, AcmeSettings, KeyType};
use crate::files::atomic_write;
use crate::pki::inspect::San;

/// A certificate from the ACME CA: the key made here and the chain as the CA sent it (leaf
/// first).
pub struct Issued {
    pub key_pem: zeroize::Zeroizing<String>,
    pub chain_pem: String,
}

/// What `state_dir/acme-account.json` holds: the account for one directory URL.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// How long one order may take, challenges and polling included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

fn builder(acme: &AcmeSettings) -> Result<instant_acme::AccountBuilder> {
    match &acme.directory_ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| {
            anyhow!(
                "[acme] directory_ca '{}' cannot be used to verify the ACME server: {e}",
                ca.display()
            )
        }),
        None => Account::builder().map_err(|e| anyhow!("cannot set up the HTTPS client: {e}")),
    }
}

/// The account for `[acme] directory`: the stored one, or a new one (stored at once).
async fn account(acme: &AcmeSettings, stored: &Path) -> Result<Account> {
    if let Ok(text) = std::fs::read(stored)
        && let Ok(s) = serde_json::from_slice::<StoredAccount>(&text)
        && s.directory == acme.directory
    {
        return builder(acme)?
            .from_credentials(s.credentials)
            .await
            .map_err(|e| reach_error(acme, e));
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let eab = acme
        .eab
        .as_ref()
        .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
    let (account, credentials) = builder(acme)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("externalAccount") || text.contains("external account") {
                anyhow!(
                    "the ACME server refused the account: {text}; check [acme] eab_kid and \
                     eab_hmac_key (the CA's external account binding)"
                )
            } else {
                reach_error(acme, e)
            }
        })?;
    let s = StoredAccount {
        directory: acme.directory.clone(),
        credentials,
    };
    if let Some(dir) = stored.parent() {
        crate::files::ensure_dir(dir, 0o700)?;
    }
    atomic_write(stored, &serde_json::to_vec_pretty(&s)?, 0o600)?;
    tracing::info!(directory = %acme.directory, id = account.id(), "ACME account created");
    Ok(account)
}

fn reach_error(acme: &AcmeSettings, e: instant_acme::Error) -> anyhow::Error {
    anyhow!(
        "cannot use the ACME server at [acme] directory '{}': {e}{}",
        acme.directory,
        if acme.directory_ca.is_none() {
            " (if it uses a private CA for its HTTPS, set [acme] directory_ca)"
        } else {
            ""
        }
    )
}

/// The identifiers to order: every SAN but loopback addresses and `localhost`, which no ACME
/// CA validates.
pub fn identifiers(sans: &[San]) -> Vec<Identifier> {
    sans.iter()
        .filter_map(|s| match s {
            San::Ip(ip) if ip.is_loopback() => None,
            San::Ip(ip) => Some(Identifier::Ip(*ip)),
            San::Dns(d) if d == "localhost" => None,
            San::Dns(d) => Some(Identifier::Dns(d.clone())),
        })
        .collect()
}

/// Gets a certificate for `sans` (see [`identifiers`]) with a new key of `key_type`.
pub async fn issue(
    acme: &AcmeSettings,
    account_file: &Path,
    sans: &[San],
    key_type: KeyType,
) -> Result<Issued> {
    let ids = identifiers(sans);
    if ids.is_empty() {
        bail!(
            "nothing to ask the ACME CA for: the server certificate has only loopback names; \
             set [server] dns_names or ip_addresses (or let auto_addresses find the host's)"
        );
    }
    tokio::time::timeout(ORDER_TIMEOUT, order(acme, account_file, &ids, key_type))
        .await
        .map_err(|_| {
            anyhow!(
                "the ACME order did not complete within {}s (challenges not validated?)",
                ORDER_TIMEOUT.as_secs()
            )
        })?
}

async fn order(
    acme: &AcmeSettings,
    account_file: &Path,
    ids: &[Identifier],
    key_type: KeyType,
) -> Result<Issued> {
    let account = account(acme, account_file).await?;
    let mut order = account
        .new_order(&NewOrder::new(ids))
        .await
        .map_err(|e| anyhow!("the ACME server refused the order for {ids:?}: {e}"))?;
    let tokens: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let alpn = Arc::new(AlpnCerts::default());
    let (challenge_type, port) = match acme.challenge {
        AcmeChallenge::Http01 => (ChallengeType::Http01, acme.http_port),
        AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, acme.tls_port),
    };
    let responder = match acme.challenge {
        AcmeChallenge::Http01 => Responder::start_http01(acme.http_port, tokens.clone()).await?,
        AcmeChallenge::TlsAlpn01 => {
            Responder::start_tls_alpn01(acme.tls_port, alpn.clone()).await?
        }
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| anyhow!("ACME authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!(
                "ACME authorization for {:?} is {other:?}",
                authz.identifier()
            ),
        }
        let identifier = authz.identifier().identifier.clone();
        let mut challenge = authz.challenge(challenge_type.clone()).ok_or_else(|| {
            anyhow!(
                "the ACME server offers no {challenge_type:?} challenge for {identifier:?}: set \
                 [acme] challenge to one it offers"
            )
        })?;
        match acme.challenge {
            AcmeChallenge::Http01 => {
                let key_auth = challenge.key_authorization().as_str().to_string();
                tokens
                    .lock()
                    .expect("token map")
                    .insert(challenge.token.clone(), key_auth);
            }
            AcmeChallenge::TlsAlpn01 => {
                let digest = challenge.key_authorization().digest().as_ref().to_vec();
                alpn.add(&identifier, &digest)?;
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| anyhow!("ACME challenge: {e}"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| anyhow!("ACME order: {e}"))?;
    drop(responder);
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(a)) = authorizations.next().await {
            for c in &a.challenges {
                if let Some(e) = &c.error {
                    why.push(format!("{}: {e}", a.identifier()));
                }
            }
        }
        bail!(
            "the ACME server could not validate this host ({}): it must reach port {port} \
             ([acme] {}) on each address of the certificate",
            if why.is_empty() {
                format!("order {status:?}")
            } else {
                why.join("; ")
            },
            match acme.challenge {
                AcmeChallenge::Http01 => "http_port",
                AcmeChallenge::TlsAlpn01 => "tls_port",
            }
        );
    }
    let key = crate::pki::issue::generate_key(key_type)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = ids
        .iter()
        .filter_map(|i| match i {
            Identifier::Ip(ip) => Some(rcgen::SanType::IpAddress(*ip)),
            Identifier::Dns(d) => d.clone().try_into().ok().map(rcgen::SanType::DnsName),
            _ => None,
        })
        .collect();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| anyhow!("ACME finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| anyhow!("ACME certificate: {e}"))?;
    Ok(Issued {
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        chain_pem,
    })
}

/// The challenge responder, on every address, for as long as it is kept: `GET
/// /.well-known/acme-challenge/TOKEN` answered with its key authorization (http-01), or a
/// TLS handshake offering `acme-tls/1` with the identifier's challenge certificate
/// (tls-alpn-01).
struct Responder {
    task: tokio::task::JoinHandle<()>,
}

async fn listen(port: u16, key: &str) -> Result<TcpListener> {
    match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on port {port} for the ACME challenge ([acme] {key}): is \
                     another server on it?"
                )
            }),
    }
}

/// tls-alpn-01 challenge certificates by the name the ACME server sends as SNI (RFC 8737; for
/// an address the reverse-DNS name, RFC 8738).
#[derive(Default, Debug)]
struct AlpnCerts(Mutex<BTreeMap<String, Arc<rustls::sign::CertifiedKey>>>);

impl AlpnCerts {
    fn add(&self, id: &Identifier, digest: &[u8]) -> Result<()> {
        let (san, sni) = match id {
            Identifier::Dns(d) => (rcgen::SanType::DnsName(d.clone().try_into()?), d.clone()),
            Identifier::Ip(ip) => (rcgen::SanType::IpAddress(*ip), reverse_name(ip)),
            other => bail!("no tls-alpn-01 for {other:?}"),
        };
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![san];
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .map_err(|e| anyhow!("tls-alpn-01 key: {e}"))?;
        let ck = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
        self.0
            .lock()
            .expect("alpn certs")
            .insert(sni.to_ascii_lowercase(), Arc::new(ck));
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for AlpnCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let certs = self.0.lock().expect("alpn certs");
        match hello.server_name() {
            Some(name) => certs
                .get(&name.trim_end_matches('.').to_ascii_lowercase())
                .cloned(),
            // Without SNI, only if there is no doubt which.
            None if certs.len() == 1 => certs.values().next().cloned(),
            None => None,
        }
    }
}

/// `d.c.b.a.in-addr.arpa`, or the nibbles of an IPv6 address under `ip6.arpa` (RFC 8738).
fn reverse_name(ip: &std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

impl Responder {
    async fn start_tls_alpn01(port: u16, certs: Arc<AlpnCerts>) -> Result<Self> {
        let listener = listen(port, "tls_port").await?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let config = Arc::new(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    continue;
                };
                let config = config.clone();
                tokio::task::spawn_blocking(move || {
                    let Ok(mut sock) = conn.into_std() else {
                        return;
                    };
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = sock.set_write_timeout(Some(Duration::from_secs(10)));
                    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut done = false;
                    for _ in 0..16 {
                        if tls.complete_io(&mut sock).is_err() {
                            break;
                        }
                        if !tls.is_handshaking() {
                            done = true;
                            break;
                        }
                    }
                    tls.send_close_notify();
                    let _ = tls.complete_io(&mut sock);
                    tracing::debug!(%peer, handshake = done, "tls-alpn-01 connection");
                });
            }
        });
        Ok(Responder { task })
    }

    async fn start_http01(port: u16, tokens: Arc<Mutex<BTreeMap<String, String>>>) -> Result<Self> {
        let listener = listen(port, "http_port").await?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, peer)) = listener.accept().await else {
                    continue;
                };
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            conn.read(&mut buf[n..]),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                            Ok(Ok(k)) => n += k,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.strip_prefix("GET "))
                        .and_then(|l| l.split(' ').next())
                        .unwrap_or("");
                    let answer = path
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|t| tokens.lock().expect("token map").get(t).cloned());
                    tracing::debug!(%peer, path, found = answer.is_some(), "http-01 request");
                    let resp = match answer {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok(Responder { task })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_as_rfc_8738_writes_them() {
        assert_eq!(
            reverse_name(&"10.77.0.11".parse().unwrap()),
            "11.0.77.10.in-addr.arpa"
        );
        assert_eq!(
            reverse_name(&"2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn identifiers_leave_out_what_no_acme_ca_validates() {
        let ids = identifiers(&[
            San::Ip("127.0.0.1".parse().unwrap()),
            San::Ip("10.0.0.5".parse().unwrap()),
            San::Dns("localhost".into()),
            San::Dns("docker.example.net".into()),
        ]);
        assert_eq!(
            ids,
            vec![
                Identifier::Ip("10.0.0.5".parse().unwrap()),
                Identifier::Dns("docker.example.net".into())
            ]
        );
    }
}
