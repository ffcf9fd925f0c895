//! Carries out a PKI plan: generates, signs, backs up what it replaces, and writes every file
//! through the atomic-write helper with its mode. Keys are written before their certificate so
//! an interrupted run leaves a pair the planner sees as mismatched and repairs.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tracing::info;

use super::issue::{self, Leaf};
use super::layout::{CERT_MODE, KEY_DIR_MODE, KEY_MODE};
use super::plan::{Action, Plan, common_name, policy_of, server_sans};
use super::{Layout, Slot};
use crate::config::Settings;
use crate::files::{Backups, atomic_write, backup, ensure_dir, set_mode, write_if_changed};
use crate::host::HostIdentity;

/// Runs every action of `plan` in order. Stops at the first error; what was written until then
/// is complete and consistent file by file, and the next run picks up from there.
pub fn execute(
    plan: &Plan,
    layout: &Layout,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
) -> Result<()> {
    let backups = Backups {
        dir: layout.backup_dir(),
        retention: settings.backup,
    };
    for action in &plan.actions {
        info!(action = %action, "pki");
        match action {
            Action::IssueCa { new_key, .. } => {
                issue_ca(layout, &backups, settings, host, now, *new_key)?
            }
            Action::Issue { slot, .. } => issue_leaf(layout, &backups, settings, host, now, slot)?,
            Action::CopyCa { slot } => {
                let ca_pem =
                    std::fs::read(layout.ca_cert()).context("cannot read the CA certificate")?;
                let copy = layout.ca_copy(slot).expect("only clients have a CA copy");
                replace(&backups, &copy, &ca_pem, CERT_MODE, now)?;
            }
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

fn issue_ca(
    layout: &Layout,
    backups: &Backups,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    new_key: bool,
) -> Result<()> {
    ensure_key_dirs(layout, &Slot::Ca)?;
    ensure_dir(&layout.cert_dir, KEY_DIR_MODE)?;
    let key = if new_key {
        let key = issue::generate_key(settings.ca.key_type)?;
        let path = layout.ca_key();
        backup(&path, backups, now)?;
        atomic_write(&path, key.serialize_pem().as_bytes(), KEY_MODE)?;
        key
    } else {
        read_ca_key(layout)?
    };
    let params = issue::ca_params(&common_name(&Slot::Ca, host), now, settings.ca.validity);
    let cert = params
        .self_signed(&key)
        .context("cannot self-sign the CA certificate")?;
    replace(
        backups,
        &layout.ca_cert(),
        cert.pem().as_bytes(),
        CERT_MODE,
        now,
    )
}

fn issue_leaf(
    layout: &Layout,
    backups: &Backups,
    settings: &Settings,
    host: &HostIdentity,
    now: SystemTime,
    slot: &Slot,
) -> Result<()> {
    ensure_key_dirs(layout, slot)?;
    let policy = policy_of(settings, slot);
    let sans = server_sans(settings, host);
    let leaf = match slot {
        Slot::Server => Leaf::Server { sans: &sans },
        _ => Leaf::Client,
    };
    let params = issue::leaf_params(leaf, &common_name(slot, host), now, policy.validity)?;
    let key = issue::generate_key(policy.key_type)?;
    let ca_pem =
        std::fs::read_to_string(layout.ca_cert()).context("cannot read the CA certificate")?;
    let cert_pem = issue::sign(&params, &key, &ca_pem, read_ca_key(layout)?)?;
    let (cert_path, key_path) = layout.cert_and_key(slot);
    backup(&key_path, backups, now)?;
    atomic_write(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    replace(backups, &cert_path, cert_pem.as_bytes(), CERT_MODE, now)?;
    if let Some(copy) = layout.ca_copy(slot) {
        replace(backups, &copy, ca_pem.as_bytes(), CERT_MODE, now)?;
    }
    Ok(())
}
