//! Makes keys and certificates with rcgen. Every certificate gets a random 128-bit serial, a
//! `not_before` backdated 5 minutes and an explicit `not_after` (rcgen's defaults are 1975 and
//! 4096, and a serial derived from the key).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RsaKeySize, SanType,
    SerialNumber,
    string::{BmpString, UniversalString},
};

use super::inspect::San;
use crate::config::KeyType;

/// How far `not_before` is set in the past, for clients whose clocks run a little behind.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Organization written into every subject.
pub const ORGANIZATION: &str = "docker-tls-manager";

/// A fresh private key of the given type.
pub fn generate_key(kt: KeyType) -> Result<KeyPair> {
    let kp = match kt {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    kp.with_context(|| format!("cannot generate a {kt} key"))
}

/// A random positive serial of 128 bits (at least 64 are required by the CA/B baseline).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn base_params(cn: &str, now: SystemTime, validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + validity).into();
    p.serial_number = Some(random_serial());
    p
}

/// Parameters of the self-signed CA. `pathlen:1`: room for the one intermediate of a key
/// rollover (the previous CA certified by this one, see `pki::rollover`).
pub fn ca_params(cn: &str, now: SystemTime, validity: Duration) -> CertificateParams {
    let mut p = base_params(cn, now, validity);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The rcgen form of a DER-encoded X.509 Name, keeping the order, the attribute types and the
/// string types, so the name rcgen writes back is the same bytes. Fails on what rcgen cannot
/// write: an RDN with several attributes, the same attribute type twice, other string types.
pub fn distinguished_name(der: &[u8]) -> Result<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;
    use x509_parser::prelude::FromDer;

    let (_, name) = x509_parser::x509::X509Name::from_der(der)
        .map_err(|e| anyhow::anyhow!("not a valid X.509 name: {e}"))?;
    let unsupported = || anyhow::anyhow!("the name '{name}' cannot be written back by rcgen");
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let [attr] = rdn.iter().collect::<Vec<_>>()[..] else {
            return Err(unsupported());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(unsupported());
        }
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| unsupported());
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => {
                DnValue::PrintableString(text()?.try_into().map_err(|_| unsupported())?)
            }
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(|_| unsupported())?),
            Tag::T61String => {
                DnValue::TeletexString(text()?.try_into().map_err(|_| unsupported())?)
            }
            Tag::BmpString => DnValue::BmpString(
                BmpString::from_utf16be(data.to_vec()).map_err(|_| unsupported())?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                UniversalString::from_utf32be(data.to_vec()).map_err(|_| unsupported())?,
            ),
            _ => return Err(unsupported()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// What a leaf certificate is for.
pub enum Leaf<'a> {
    Server {
        sans: &'a BTreeSet<San>,
    },
    /// A client, with the role it carries (subject OU, see `authz::Role::ou`); the probe has none.
    Client {
        role: Option<crate::authz::Role>,
    },
}

/// Parameters of a server or client certificate.
pub fn leaf_params(
    leaf: Leaf<'_>,
    cn: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateParams> {
    let mut p = base_params(cn, now, validity);
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    match leaf {
        Leaf::Server { sans } => {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for san in sans {
                p.subject_alt_names.push(match san {
                    San::Dns(d) => SanType::DnsName(
                        d.clone()
                            .try_into()
                            .with_context(|| format!("bad DNS name '{d}'"))?,
                    ),
                    San::Ip(ip) => SanType::IpAddress(*ip),
                });
            }
        }
        Leaf::Client { role } => {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if let Some(role) = role {
                let mut dn = DistinguishedName::new();
                dn.push(DnType::OrganizationName, ORGANIZATION);
                dn.push(DnType::OrganizationalUnitName, role.ou());
                dn.push(DnType::CommonName, cn);
                p.distinguished_name = dn;
            }
        }
    }
    Ok(p)
}

/// Signs `params` for `key` with the CA (its certificate PEM and its key).
pub fn sign(
    params: &CertificateParams,
    key: &KeyPair,
    ca_cert_pem: &str,
    ca_key: KeyPair,
) -> Result<String> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .context("cannot use the CA certificate to sign")?;
    Ok(params
        .signed_by(key, &issuer)
        .context("signing failed")?
        .pem())
}
