//! Carries out a PKI plan: generates, signs, backs up what it replaces, and writes every file
//! through the atomic-write helper with its mode. Keys are written before their certificate so
//! an interrupted run leaves a pair the planner sees as mismatched and repairs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use tracing::info;

use super::inspect::{CaName, CaRecord, San, cert_info, read_cert_info};
use super::issue::{self, Leaf};
use super::plan::{Action, Plan, Reason, common_name, policy_of};
use super::rollover::{self, Phase};
use super::{Layout, Slot};
use crate::config::Settings;
use crate::files::{Backups, atomic_write, backup, ensure_dir, set_mode, write_if_changed};
use crate::host::HostIdentity;
use crate::layout::{CERT_MODE, KEY_DIR_MODE, KEY_MODE};

/// Runs every action of `plan` in order. Stops at the first error; what was written until then
/// is complete and consistent file by file, and the next run picks up from there.
#[cfg(test)]
pub fn execute(
    plan: &Plan,
    layout: &Layout,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
) -> Result<()> {
    execute_with(plan, layout, settings, host, now, None)
}

/// [`execute`], with the server certificate the ACME CA issued for this plan (`[acme]`: the
/// convergence orders it before, since that is network I/O; see `acme`).
pub fn execute_with(
    plan: &Plan,
    layout: &Layout,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    acme_server: Option<&crate::acme::Issued>,
) -> Result<()> {
    let backups = Backups {
        dir: layout.backup_dir(),
        retention: settings.backup,
    };
    let mut issued = crate::authz::policy::IssuedLog::new(layout.authz_issued(), &backups, now);
    for action in &plan.actions {
        info!(action = %action, "pki");
        match action {
            Action::IssueCa { new_key, reason } => issue_ca(
                layout,
                &backups,
                settings,
                host,
                now,
                *new_key,
                plan.ca_subject.as_ref(),
                *reason == Reason::RolloverStart,
            )?,
            Action::Issue {
                slot: Slot::Server, ..
            } if layout.acme_issuer_root.is_some() => {
                let issued = acme_server.context(
                    "the server certificate comes from the ACME CA ([acme]), and none was obtained",
                )?;
                install_acme_server(layout, &backups, &issued.key_pem, &issued.chain_pem, now)?;
            }
            Action::Issue { slot, .. } => issue_leaf(
                layout,
                &backups,
                settings,
                host,
                now,
                slot,
                &plan.server_sans,
                plan.rollover == Some(Phase::Overlap),
                &mut issued,
            )?,
            Action::CopyCa { slot } => {
                let trust = server_trust_pem(layout)?;
                let copy = layout.ca_copy(slot).expect("only clients have a CA copy");
                replace(&backups, &copy, &trust, CERT_MODE, now)?;
            }
            Action::SavePreviousCa => {
                ensure_key_dirs(layout, &Slot::Ca)?;
                let key = std::fs::read(layout.ca_key()).context("cannot read the CA key")?;
                atomic_write(
                    &layout.ca_previous_cert(),
                    &current_ca_pem(layout)?,
                    CERT_MODE,
                )?;
                atomic_write(&layout.ca_previous_key(), &key, KEY_MODE)?;
            }
            Action::CrossSign => cross_sign(layout, now)?,
            Action::WriteTrust { with_previous } => {
                let mut trust = current_ca_pem(layout)?;
                if *with_previous {
                    let prev = std::fs::read(layout.ca_previous_cert())
                        .context("cannot read the previous CA certificate")?;
                    trust.extend_from_slice(rollover::first_block(&prev));
                }
                replace(&backups, &layout.ca_cert(), &trust, CERT_MODE, now)?;
            }
            Action::DestroyPreviousCa => destroy_previous(layout)?,
            Action::EndRollover => remove_if_present(&layout.rollover_record())?,
            Action::RecordCaSubject => record_ca_subject(layout)?,
            Action::FixMode { path, mode, .. } => set_mode(path, *mode)?,
        }
    }
    Ok(())
}

/// Backs up `path` if its content changes, then writes it atomically.
fn replace(backups: &Backups, path: &Path, data: &[u8], mode: u32, now: SystemTime) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old != data) {
        backup(path, backups, now)?;
    }
    write_if_changed(path, data, mode)?;
    Ok(())
}

fn ensure_key_dirs(layout: &Layout, slot: &Slot) -> Result<()> {
    for d in layout.key_dirs(slot) {
        ensure_dir(&d, KEY_DIR_MODE)?;
    }
    Ok(())
}

fn read_ca_key(layout: &Layout) -> Result<rcgen::KeyPair> {
    let path = layout.ca_key();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the CA key '{}'", path.display()))?;
    rcgen::KeyPair::from_pem(&text)
        .with_context(|| format!("cannot parse the CA key '{}'", path.display()))
}

/// Puts an imported CA in place of this host's (`ca import`), backing up what it replaces.
/// Order, so that a crash between any two writes converges on the imported CA: its subject
/// record first (ignored while the key on disk is another one), then its key (the planner
/// re-signs a certificate for a key that lacks one under the recorded subject, which every
/// client of the fleet already trusts), then its certificate.
pub fn install_ca(
    layout: &Layout,
    backups: &Backups,
    ca: &super::transfer::CaMaterial,
    now: SystemTime,
) -> Result<()> {
    ensure_key_dirs(layout, &Slot::Ca)?;
    ensure_dir(&layout.cert_dir, KEY_DIR_MODE)?;
    let record = serde_json::to_vec_pretty(&CaRecord::of(&ca.cert))?;
    replace(backups, &layout.ca_subject_record(), &record, KEY_MODE, now)?;
    replace(
        backups,
        &layout.ca_key(),
        ca.key_pem.as_bytes(),
        KEY_MODE,
        now,
    )?;
    replace(
        backups,
        &layout.ca_cert(),
        ca.cert_pem.as_bytes(),
        CERT_MODE,
        now,
    )?;
    Ok(())
}

/// Writes `state_dir/ca-subject.json` from the CA certificate on disk.
fn record_ca_subject(layout: &Layout) -> Result<()> {
    let path = layout.ca_cert();
    let info = read_cert_info(&path)
        .with_context(|| format!("cannot read the CA certificate '{}'", path.display()))?;
    let json = serde_json::to_vec_pretty(&CaRecord::of(&info))?;
    write_if_changed(&layout.ca_subject_record(), &json, KEY_MODE)?;
    Ok(())
}

/// The current CA certificate alone (ca.pem also holds the previous one during a rollover).
/// Puts a server key and chain from the ACME CA in place: recorded together first
/// (`Layout::acme_pending`), so a crash between the key and the chain is finished from the
/// record by [`finish_acme_pending`] (no new order, no mismatched pair for dockerd).
pub fn install_acme_server(
    layout: &Layout,
    backups: &Backups,
    key_pem: &str,
    chain_pem: &str,
    now: SystemTime,
) -> Result<()> {
    ensure_key_dirs(layout, &Slot::Server)?;
    atomic_write(
        &layout.acme_pending(),
        format!("{key_pem}{chain_pem}").as_bytes(),
        KEY_MODE,
    )?;
    let (cert_path, key_path) = layout.cert_and_key(&Slot::Server);
    backup(&key_path, backups, now)?;
    atomic_write(&key_path, key_pem.as_bytes(), KEY_MODE)?;
    replace(backups, &cert_path, chain_pem.as_bytes(), CERT_MODE, now)?;
    remove_if_present(&layout.acme_pending())
}

/// Finishes an installation cut short ([`install_acme_server`]): key and chain from the
/// record, if they belong together; a record that does not is dropped. Under the state lock.
pub fn finish_acme_pending(layout: &Layout, backups: &Backups, now: SystemTime) -> Result<()> {
    let path = layout.acme_pending();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let split = text.find("-----BEGIN CERTIFICATE-----");
    let usable = split.and_then(|i| {
        let (key, chain) = text.split_at(i);
        let kp = rcgen::KeyPair::from_pem(key).ok()?;
        let leaf = super::inspect::first_cert_der(chain.as_bytes())
            .and_then(|d| cert_info(&d))
            .ok()?;
        (leaf.public_key == kp.public_key_raw()).then_some((key, chain))
    });
    match usable {
        Some((key, chain)) => {
            info!("finishing the installation of the certificate from the ACME CA");
            install_acme_server(layout, backups, key, chain, now)
        }
        None => {
            tracing::warn!(path = %path.display(), "dropping an unusable record of an ACME certificate");
            remove_if_present(&path)
        }
    }
}

/// What a client's copy holds: see `inspect::server_trust`.
fn server_trust_pem(layout: &Layout) -> Result<Vec<u8>> {
    let ca = std::fs::read(layout.ca_cert()).ok();
    super::inspect::server_trust(layout, ca.as_deref()).with_context(|| {
        match &layout.acme_issuer_root {
            Some(r) => format!("cannot read [acme] issuer_root '{}'", r.display()),
            None => "cannot read the CA certificate".to_string(),
        }
    })
}

fn current_ca_pem(layout: &Layout) -> Result<Vec<u8>> {
    let pem = std::fs::read(layout.ca_cert()).context("cannot read the CA certificate")?;
    Ok(rollover::first_block(&pem).to_vec())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove '{}'", path.display()))
        }
        _ => Ok(()),
    }
}

/// Certifies the previous CA (its exact name, key and key identifier) with the current CA
/// key, for [`rollover::CROSS_VALIDITY`] at most (never beyond the previous CA itself).
fn cross_sign(layout: &Layout, now: SystemTime) -> Result<()> {
    let prev_path = layout.ca_previous_cert();
    let prev = read_cert_info(&prev_path).with_context(|| {
        format!(
            "cannot read the previous CA certificate '{}'",
            prev_path.display()
        )
    })?;
    let prev_key_path = layout.ca_previous_key();
    let prev_key = std::fs::read_to_string(&prev_key_path)
        .ok()
        .and_then(|t| rcgen::KeyPair::from_pem(&t).ok())
        .with_context(|| {
            format!(
                "cannot read the previous CA key '{}'",
                prev_key_path.display()
            )
        })?;
    let validity =
        rollover::CROSS_VALIDITY.min(prev.not_after.duration_since(now).unwrap_or_default());
    let mut params = issue::ca_params("", now, validity);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    // Server authentication only: Go, OpenSSL and Python apply an intermediate's EKU, so an
    // old client certificate sent with this cross certificate (which every phase-1 handshake
    // hands out) does not chain to the new CA for client authentication.
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.distinguished_name = issue::distinguished_name(&prev.subject_der)?;
    if let Some(id) = &prev.subject_key_id {
        params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id.clone());
    }
    params.use_authority_key_identifier_extension = true;
    let ca_pem = String::from_utf8(current_ca_pem(layout)?)?;
    let cert = issue::sign(&params, &prev_key, &ca_pem, read_ca_key(layout)?)?;
    atomic_write(&layout.ca_cross(), cert.as_bytes(), CERT_MODE)
}

/// Destroys the previous CA: its key first, then every copy of that key in the backups, then
/// its certificate and the cross certificate. Removal, not secure erasure.
fn destroy_previous(layout: &Layout) -> Result<()> {
    let public_key = rollover::load_record(layout)
        .ok()
        .flatten()
        .and_then(|r| r.previous_public_key())
        .or_else(
            || match super::inspect::read_key(&layout.ca_previous_key()) {
                super::inspect::KeyState::Readable { public_key } => Some(public_key),
                _ => None,
            },
        );
    remove_if_present(&layout.ca_previous_key())?;
    if let Some(pk) = public_key {
        for copy in rollover::key_copies(&layout.backup_dir(), &pk) {
            info!(path = %copy.display(), "removing a backup copy of the previous CA key");
            remove_if_present(&copy)?;
        }
    }
    remove_if_present(&layout.ca_cross())?;
    remove_if_present(&layout.ca_previous_cert())
}

/// Self-signs the CA: with a new key (named after the host), or re-signing the existing key
/// under `name` when given: the same subject bytes and subject key identifier.
#[allow(clippy::too_many_arguments)]
fn issue_ca(
    layout: &Layout,
    backups: &Backups,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    new_key: bool,
    name: Option<&CaName>,
    rollover_start: bool,
) -> Result<()> {
    ensure_key_dirs(layout, &Slot::Ca)?;
    ensure_dir(&layout.cert_dir, KEY_DIR_MODE)?;
    let key = if new_key {
        let key = issue::generate_key(settings.ca.key_type)?;
        let path = layout.ca_key();
        // A rollover keeps the old key as the previous CA's until it finishes, then destroys
        // it: no backup copy.
        if !rollover_start {
            backup(&path, backups, now)?;
        }
        atomic_write(&path, key.serialize_pem().as_bytes(), KEY_MODE)?;
        key
    } else {
        read_ca_key(layout)?
    };
    let name = if new_key { None } else { name };
    // A new CA beside a previous one gets its own name (the previous is named after the host
    // too): Go and OpenSSL look issuers up by name.
    let cn = match name {
        None if layout.ca_previous_cert().exists() => format!(
            "{} {}",
            common_name(&Slot::Ca, host),
            humantime::format_rfc3339_seconds(now)
        ),
        _ => common_name(&Slot::Ca, host),
    };
    let mut params = issue::ca_params(&cn, now, settings.ca.validity);
    if let Some(name) = name {
        params.distinguished_name = issue::distinguished_name(&name.subject_der)?;
        if let Some(id) = &name.key_id {
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id.clone());
        }
    }
    let cert = params
        .self_signed(&key)
        .context("cannot self-sign the CA certificate")?;
    if let Some(name) = name {
        let info = cert_info(cert.der()).map_err(anyhow::Error::msg)?;
        if info.subject_der != name.subject_der
            || (name.key_id.is_some() && info.subject_key_id != name.key_id)
        {
            bail!(
                "cannot reproduce the CA's subject '{}' exactly; the CA is left as it is. Run \
                 `docker-tls-manager renew --force ca` to make a new CA, then hand every client \
                 a new bundle",
                info.subject
            );
        }
    }
    replace(
        backups,
        &layout.ca_cert(),
        cert.pem().as_bytes(),
        CERT_MODE,
        now,
    )?;
    record_ca_subject(layout)
}

/// The role a new certificate of client `name` carries; refused when `client add --role`'s
/// record cannot be read (never an admin certificate by mistake).
fn client_role(settings: &Settings, name: &str) -> Result<crate::authz::Role> {
    let given = crate::authz::policy::load_roles(&settings.paths.authz_roles())
        .with_context(|| format!("cannot tell the role of client '{name}'"))?;
    Ok(crate::authz::policy::wanted_role(settings, &given, name))
}

#[allow(clippy::too_many_arguments)]
fn issue_leaf(
    layout: &Layout,
    backups: &Backups,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    slot: &Slot,
    sans: &BTreeSet<San>,
    overlap: bool,
    issued: &mut crate::authz::policy::IssuedLog<'_>,
) -> Result<()> {
    ensure_key_dirs(layout, slot)?;
    let policy = policy_of(settings, slot);
    let leaf = match slot {
        Slot::Server => Leaf::Server { sans },
        Slot::Client(name) => Leaf::Client {
            role: Some(client_role(settings, name)?),
        },
        _ => Leaf::Client { role: None },
    };
    let params = issue::leaf_params(leaf, &common_name(slot, host), now, policy.validity)?;
    let key = issue::generate_key(policy.key_type)?;
    let ca_pem = String::from_utf8(current_ca_pem(layout)?)?;
    // In phase 1 of a rollover the server certificate is the previous CA's, followed by the
    // cross certificate (see `pki::rollover`).
    let cert_pem = if overlap && *slot == Slot::Server {
        let prev_pem = std::fs::read_to_string(layout.ca_previous_cert())
            .context("cannot read the previous CA certificate")?;
        let prev_key = std::fs::read_to_string(layout.ca_previous_key())
            .ok()
            .and_then(|t| rcgen::KeyPair::from_pem(&t).ok())
            .context("cannot read the previous CA key")?;
        let cross = std::fs::read_to_string(layout.ca_cross())
            .context("cannot read the cross certificate")?;
        issue::sign(&params, &key, &prev_pem, prev_key)? + &cross
    } else {
        issue::sign(&params, &key, &ca_pem, read_ca_key(layout)?)?
    };
    if let Slot::Client(_) = slot {
        // Before the certificate exists anywhere: revocation can always reach it.
        issued.record(cert_pem.as_bytes())?;
    }
    let (cert_path, key_path) = layout.cert_and_key(slot);
    backup(&key_path, backups, now)?;
    atomic_write(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    replace(backups, &cert_path, cert_pem.as_bytes(), CERT_MODE, now)?;
    if let Some(copy) = layout.ca_copy(slot) {
        replace(backups, &copy, &server_trust_pem(layout)?, CERT_MODE, now)?;
    }
    Ok(())
}
