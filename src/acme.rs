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
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
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
    use hyper_rustls::HttpsConnectorBuilder;
    let https = match &acme.directory_ca {
        Some(ca) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            CertificateDer::from_pem_file(ca)
                .map_err(|e| anyhow!("{e}"))
                .and_then(|der| roots.add(der).map_err(|e| anyhow!("{e}")))
                .map_err(|e| {
                    anyhow!(
                        "[acme] directory_ca '{}' cannot be used to verify the ACME server: {e}",
                        ca.display()
                    )
                })?;
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| anyhow!("TLS settings: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        }
        None => HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| anyhow!("cannot set up the HTTPS client: {e}"))?,
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https.https_only().enable_http1().enable_http2().build());
    Ok(Account::builder_with_http(Box::new(SaneRetryAfter(client))))
}

/// The longest `Retry-After` (seconds) passed on to instant-acme: a year.
const MAX_RETRY_AFTER_S: u64 = 365 * 24 * 3600;

/// The ACME server's HTTPS, with one guard: a `Retry-After` of more seconds than
/// [`MAX_RETRY_AFTER_S`] is cut to it. instant-acme adds the header's seconds to the clock,
/// which panics past about 2^63 seconds, and the release build aborts on a panic: a broken or
/// hostile ACME server would stop the service at every start.
struct SaneRetryAfter<C>(C);

impl<C: instant_acme::HttpClient> instant_acme::HttpClient for SaneRetryAfter<C> {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let fut = instant_acme::HttpClient::request(&self.0, req);
        Box::pin(async move {
            let mut rsp = fut.await?;
            cap_retry_after(&mut rsp.parts.headers);
            Ok(rsp)
        })
    }
}

/// Cuts a `Retry-After` in seconds (as instant-acme reads it: a `u64`, surrounding space
/// allowed) to [`MAX_RETRY_AFTER_S`]; an HTTP date or anything else is left as it is.
fn cap_retry_after(headers: &mut http::HeaderMap) {
    let too_long = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|s| s > MAX_RETRY_AFTER_S);
    if too_long {
        headers.insert(http::header::RETRY_AFTER, MAX_RETRY_AFTER_S.into());
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

/// How long asking for renewal information may take.
const RENEWAL_INFO_TIMEOUT: Duration = Duration::from_secs(15);

/// The ACME CA's renewal information (RFC 9773) for the certificate with identifier `cert_id`
/// (`CertInfo::ari_id`): the suggested window and the Retry-After hint; `None` when the CA
/// does not offer it (no `renewalInfo` in its directory).
pub async fn renewal_info(
    acme: &AcmeSettings,
    account_file: &Path,
    cert_id: &str,
) -> Result<Option<crate::ari::Answer>> {
    let id = certificate_identifier(cert_id)?;
    let ask = async {
        let account = self::account(acme, account_file).await?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let w = info.suggested_window;
                Ok(Some(crate::ari::Answer {
                    window_start: w.start.into(),
                    window_end: w.end.into(),
                    explanation_url: info.explanation_url,
                    retry_after,
                }))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(anyhow!("the ACME server's renewal information: {e}")),
        }
    };
    tokio::time::timeout(RENEWAL_INFO_TIMEOUT, ask)
        .await
        .map_err(|_| {
            anyhow!(
                "the ACME server's renewal information did not come within {}s",
                RENEWAL_INFO_TIMEOUT.as_secs()
            )
        })?
}

/// `AKI.SERIAL` (both base64url) as instant-acme carries it.
fn certificate_identifier(cert_id: &str) -> Result<CertificateIdentifier<'static>> {
    let (aki, serial) = cert_id
        .split_once('.')
        .ok_or_else(|| anyhow!("'{cert_id}' is no ACME certificate identifier"))?;
    Ok(CertificateIdentifier {
        authority_key_identifier: aki.to_string().into(),
        serial: serial.to_string().into(),
    })
}

/// Gets a certificate for `sans` (see [`identifiers`]) with a new key of `key_type`; the order
/// names the certificate it `replaces` (RFC 9773 §5, the identifier of the current one) when
/// the CA offers renewal information.
pub async fn issue(
    acme: &AcmeSettings,
    account_file: &Path,
    sans: &[San],
    key_type: KeyType,
    replaces: Option<&str>,
) -> Result<Issued> {
    let ids = identifiers(sans);
    if ids.is_empty() {
        bail!(
            "nothing to ask the ACME CA for: the server certificate has only loopback names; \
             set [server] dns_names or ip_addresses (or let auto_addresses find the host's)"
        );
    }
    let replaces = replaces.map(certificate_identifier).transpose()?;
    tokio::time::timeout(
        ORDER_TIMEOUT,
        order(acme, account_file, &ids, key_type, replaces),
    )
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
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued> {
    issuer_root(acme)?;
    let account = self::account(acme, account_file).await?;
    let new_order = match &replaces {
        Some(id) => NewOrder::new(ids).replaces(id.clone()),
        None => NewOrder::new(ids),
    };
    let first = match account.new_order(&new_order).await {
        // The CA refuses the replacement (already replaced, not ours...): the order without it,
        // once; a renewal is never held back by ARI.
        Err(e @ instant_acme::Error::Api(_))
            if replaces.is_some() && !e.to_string().contains("accountDoesNotExist") =>
        {
            tracing::info!(
                "the ACME server refused the order as a replacement ({e}); ordering without \
                 `replaces`"
            );
            account.new_order(&NewOrder::new(ids)).await
        }
        other => other,
    };
    let mut order = match first {
        Ok(o) => o,
        // The CA forgot the account (its database reset): a new one, once; the old
        // credentials are kept beside, renamed.
        Err(e) if e.to_string().contains("accountDoesNotExist") => {
            let stale = account_file.with_extension("json.unknown");
            tracing::warn!(
                path = %account_file.display(),
                "the ACME CA no longer knows our account; creating a new one (the old credentials \
                 are kept as '{}')",
                stale.display()
            );
            std::fs::rename(account_file, &stale)
                .with_context(|| format!("cannot move '{}' aside", account_file.display()))?;
            self::account(acme, account_file)
                .await?
                .new_order(&NewOrder::new(ids))
                .await
                .map_err(|e| anyhow!("the ACME server refused the order for {ids:?}: {e}"))?
        }
        Err(e) => bail!("the ACME server refused the order for {ids:?}: {e}"),
    };
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
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    check_issued(
        acme,
        &chain_pem,
        key.public_key_raw(),
        ids,
        std::time::SystemTime::now(),
    )?;
    Ok(Issued { key_pem, chain_pem })
}

/// The root of the chains the ACME CA issues, checked: a readable CA certificate.
fn issuer_root(acme: &AcmeSettings) -> Result<Vec<u8>> {
    let root = std::fs::read(&acme.issuer_root).with_context(|| {
        format!(
            "cannot read [acme] issuer_root '{}': put the ACME CA's root certificate there",
            acme.issuer_root.display()
        )
    })?;
    let info = crate::pki::inspect::first_cert_der(&root)
        .and_then(|d| crate::pki::inspect::cert_info(&d))
        .map_err(|e| anyhow!("[acme] issuer_root '{}': {e}", acme.issuer_root.display()))?;
    if !info.is_ca {
        bail!(
            "[acme] issuer_root '{}' is not a CA certificate ({}): name the ACME CA's root",
            acme.issuer_root.display(),
            info.subject
        );
    }
    Ok(root)
}

/// What the ACME CA sent, checked before anything is written: the leaf carries our key, the
/// names and addresses asked for, serverAuth, is no CA, is valid now, and the chain leads to
/// `[acme] issuer_root`. Anything else would be served to clients (or make dockerd fail).
pub fn check_issued(
    acme: &AcmeSettings,
    chain_pem: &str,
    public_key: &[u8],
    ids: &[Identifier],
    now: std::time::SystemTime,
) -> Result<()> {
    use crate::pki::inspect::{cert_info, chain_verifies, first_cert_der};
    let refuse = |why: String| {
        anyhow!("the certificate the ACME CA issued is not usable, nothing was written: {why}")
    };
    let leaf = first_cert_der(chain_pem.as_bytes())
        .and_then(|d| cert_info(&d))
        .map_err(refuse)?;
    if leaf.public_key != public_key {
        return Err(refuse("it does not carry the key we sent".into()));
    }
    if !leaf.server_auth || leaf.is_ca {
        return Err(refuse(
            "it is not a server certificate (serverAuth, CA:FALSE)".into(),
        ));
    }
    if now < leaf.not_before || now >= leaf.not_after {
        return Err(refuse(
            "it is not valid now (check this host's clock)".into(),
        ));
    }
    for id in ids {
        let san = match id {
            Identifier::Ip(ip) => San::Ip(*ip),
            Identifier::Dns(d) => San::Dns(d.to_ascii_lowercase()),
            _ => continue,
        };
        if !leaf.sans.contains(&san) {
            return Err(refuse(format!("it does not name {san}")));
        }
    }
    let root = issuer_root(acme)?;
    if !chain_verifies(chain_pem.as_bytes(), &root) {
        return Err(refuse(format!(
            "its chain does not lead to [acme] issuer_root '{}': name the root of this CA there",
            acme.issuer_root.display()
        )));
    }
    Ok(())
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
        let task = tokio::spawn(serve(listener, move |conn, peer| {
            let config = config.clone();
            async move {
                // The handshake is blocking rustls I/O: on a blocking thread, each read and
                // write bounded, the whole within the connection's deadline.
                let work = tokio::task::spawn_blocking(move || {
                    let Ok(mut sock) = conn.into_std() else {
                        return;
                    };
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = sock.set_write_timeout(Some(Duration::from_secs(2)));
                    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut done = false;
                    for _ in 0..4 {
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
                let _ = work.await;
            }
        }));
        Ok(Responder { task })
    }

    async fn start_http01(port: u16, tokens: Arc<Mutex<BTreeMap<String, String>>>) -> Result<Self> {
        let listener = listen(port, "http_port").await?;
        let task = tokio::spawn(serve(listener, move |mut conn, peer| {
            let tokens = tokens.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
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
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        }));
        Ok(Responder { task })
    }
}

/// How many challenge connections are answered at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;
/// How long one challenge connection may take, whatever it sends (or does not).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// The accept loop of a responder: each connection handled by `handle` within
/// [`CONNECTION_DEADLINE`], at most [`MAX_CONNECTIONS`] at once, all of them ended when the
/// responder is dropped (the tasks belong to this loop's `JoinSet`).
async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((conn, peer)) => {
                let work = handle(conn, peer);
                tasks.spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_DEADLINE, work).await;
                    drop(permit);
                });
            }
            // Out of file descriptors and the like: no busy loop.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
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

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn get(port: u16, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    /// A stand-in ACME server (no network): its directory names `renewalInfo`, whose answer
    /// carries `retry_after` as its Retry-After header.
    struct FakeAcme {
        retry_after: &'static str,
    }

    impl instant_acme::HttpClient for FakeAcme {
        fn request(
            &self,
            req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                    > + Send,
            >,
        > {
            let uri = req.uri().to_string();
            let retry_after = self.retry_after;
            Box::pin(async move {
                let (body, retry_after) = if uri == "https://acme.test/dir" {
                    (
                        r#"{"newNonce":"https://acme.test/nonce","newAccount":"https://acme.test/acct","newOrder":"https://acme.test/order","renewalInfo":"https://acme.test/ari"}"#,
                        None,
                    )
                } else if uri.starts_with("https://acme.test/ari/") {
                    (
                        r#"{"suggestedWindow":{"start":"2030-01-01T00:00:00Z","end":"2030-01-02T00:00:00Z"}}"#,
                        Some(retry_after),
                    )
                } else {
                    panic!("unexpected request to {uri}");
                };
                let mut rsp = http::Response::builder().status(200);
                if let Some(r) = retry_after {
                    rsp = rsp.header(http::header::RETRY_AFTER, r);
                }
                Ok(instant_acme::BytesResponse::from(
                    rsp.body(instant_acme::BodyWrapper::<bytes::Bytes>::from(
                        body.as_bytes().to_vec(),
                    ))
                    .unwrap(),
                ))
            })
        }
    }

    async fn ask_renewal_info(
        http: Box<dyn instant_acme::HttpClient>,
    ) -> Result<Duration, instant_acme::Error> {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().unwrap();
        let credentials: AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": "https://acme.test/acct/1",
            "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": "https://acme.test/dir",
        }))
        .unwrap();
        let account = Account::builder_with_http(http)
            .from_credentials(credentials)
            .await?;
        let id = certificate_identifier("AAAA.AQ").unwrap();
        account.renewal_info(&id).await.map(|(_, after)| after)
    }

    /// instant-acme adds Retry-After's seconds to the clock, which panics past about 2^63 s
    /// (the release build would abort): behind the guard such a header is cut to a year;
    /// ordinary ones and HTTP dates pass as they are.
    #[tokio::test]
    async fn a_retry_after_too_long_for_the_clock_is_cut_to_a_year() {
        let huge = "18446744073709551615";
        let unguarded = tokio::spawn(ask_renewal_info(Box::new(FakeAcme { retry_after: huge })));
        let panic = unguarded.await.unwrap_err().into_panic();
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(
            msg.contains("overflow"),
            "instant-acme no longer panics on it (the guard may go), or panicked otherwise: {msg}"
        );
        let after = ask_renewal_info(Box::new(SaneRetryAfter(FakeAcme { retry_after: huge })))
            .await
            .unwrap();
        let year = Duration::from_secs(MAX_RETRY_AFTER_S);
        assert!(
            after <= year && after > year - Duration::from_secs(60),
            "{after:?}"
        );
        let plus_huge = ask_renewal_info(Box::new(SaneRetryAfter(FakeAcme {
            retry_after: "+18446744073709551615",
        })))
        .await
        .unwrap();
        assert!(plus_huge <= year && plus_huge > year - Duration::from_secs(60));
        // An HTTP date, the latest it can be: no panic, passed as it is.
        let date = ask_renewal_info(Box::new(SaneRetryAfter(FakeAcme {
            retry_after: "Fri, 31 Dec 9999 23:59:59 GMT",
        })))
        .await
        .unwrap();
        assert!(date > Duration::from_secs(7000 * 365 * 86400), "{date:?}");
        for (header, want) in [("3600", 3600), (" 120 ", 120), ("0", 0)] {
            let after = ask_renewal_info(Box::new(SaneRetryAfter(FakeAcme {
                retry_after: header,
            })))
            .await
            .unwrap()
            .as_secs();
            assert!(after <= want && after + 60 >= want, "{header}: {after}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            "Fri, 31 Dec 9999 23:59:59 GMT".parse().unwrap(),
        );
        cap_retry_after(&mut h);
        assert_eq!(
            h[http::header::RETRY_AFTER],
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    /// Connections that send nothing neither hold the answer back for long nor outlive the
    /// responder (the ACME CA's validation must get through; nothing must stay open after).
    #[tokio::test]
    async fn http01_answers_despite_idle_connections_and_closes_them_all_when_dropped() {
        let port = free_port();
        let tokens: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        tokens
            .lock()
            .unwrap()
            .insert("tok".into(), "tok.thumb".into());
        let r = Responder::start_http01(port, tokens).await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 50 {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            c.write_all(b"G").await.unwrap();
            idle.push(c);
        }
        let t = std::time::Instant::now();
        let answer = get(port, "/.well-known/acme-challenge/tok").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("tok.thumb"),
            "{answer}"
        );
        assert!(
            t.elapsed() < CONNECTION_DEADLINE * 2 + Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        assert!(
            get(port, "/.well-known/acme-challenge/other")
                .await
                .starts_with("HTTP/1.1 404")
        );
        drop(r);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every connection is closed by now (a read returns end of file at once).
        for mut c in idle.into_iter().take(10) {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut b)).await;
            assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        }
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
    }

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
