//! `ca`: share one CA between hosts (export on one, import on the others), so that one client
//! bundle works on every host and each host still issues its own server certificate.

use std::io::Read;

use zeroize::Zeroizing;

use super::*;
use crate::cli::CaCommand;
use crate::pki::execute::install_ca;
use crate::pki::inspect::{self, CertState};
use crate::pki::transfer::{self, OpenError};

pub(crate) async fn ca(ctx: &Ctx, cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Export {
            output,
            passphrase_file,
        } => export(ctx, &output, passphrase_file.as_deref()).await,
        CaCommand::Import {
            file,
            passphrase_file,
            force,
        } => import(ctx, &file, &passphrase_file, force).await,
    }
}

/// A passphrase from a file or standard input (`-`), without its line end.
fn read_passphrase(path: &Path) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| {
        UsageError(format!(
            "cannot read the passphrase from '{}': {e}",
            path.display()
        ))
    })?;
    let pass = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if pass.is_empty() {
        return Err(UsageError(format!(
            "the passphrase in '{}' is empty; write the passphrase `ca export` printed into it",
            path.display()
        ))
        .into());
    }
    Ok(pass)
}

async fn export(ctx: &Ctx, output: &Path, passphrase_file: Option<&Path>) -> Result<()> {
    let layout = ctx.layout();
    let (cert_pem, key_pem) = {
        let _lock = StateLock::acquire(layout, LOCK_WAIT).await?;
        let cert = std::fs::read(layout.ca_cert()).ok();
        let key = std::fs::read_to_string(layout.ca_key())
            .ok()
            .map(Zeroizing::new);
        match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(UsageError(format!(
                    "this host has no CA yet ('{}', '{}'): run `docker-tls-manager apply` first",
                    layout.ca_cert().display(),
                    layout.ca_key().display()
                ))
                .into());
            }
        }
    };
    let der = inspect::first_cert_der(&cert_pem)
        .map_err(|e| anyhow::anyhow!("'{}': {e}", layout.ca_cert().display()))?;
    let info = inspect::cert_info(&der)
        .map_err(|e| anyhow::anyhow!("'{}': {e}", layout.ca_cert().display()))?;
    let made = passphrase_file.is_none();
    let pass = match passphrase_file {
        Some(p) => read_passphrase(p)?,
        None => transfer::new_passphrase(),
    };
    let host = HostIdentity::detect()?;
    let comment = format!(
        "docker-tls-manager CA export: {}, SHA-256 {}, from {} at {}.\n\
         On another host: docker-tls-manager ca import FILE --passphrase-file PASSFILE",
        info.subject,
        info.fingerprint,
        host.hostname,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    let text = transfer::seal(
        &String::from_utf8_lossy(&cert_pem),
        &key_pem,
        &pass,
        &comment,
    )?;
    if output == Path::new("-") {
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        atomic_write(output, text.as_bytes(), 0o600)?;
        println!(
            "CA exported to '{}' (its key encrypted; mode 0600)",
            output.display()
        );
    }
    tracing::info!(subject = %info.subject, fingerprint = %info.fingerprint, "CA exported");
    if made {
        // Shown once, on the terminal, never logged: it goes to the other host by another
        // channel than the file.
        let mut err = std::io::stderr();
        writeln!(
            err,
            "passphrase (give it to the other host separately from the file): {}",
            &*pass
        )?;
    }
    Ok(())
}

async fn import(ctx: &Ctx, file: &Path, passphrase_file: &Path, force: bool) -> Result<()> {
    let layout = ctx.layout();
    let text = std::fs::read(file)
        .map_err(|e| UsageError(format!("cannot read '{}': {e}", file.display())))?;
    let pass = read_passphrase(passphrase_file)?;
    let ca = transfer::open(&text, &pass).map_err(|e| {
        let what = match e {
            OpenError::WrongPassphrase => {
                "check the passphrase (the one `ca export` printed, or the file given to it)"
            }
            _ => "export it again on the host whose CA is wanted: `docker-tls-manager ca export -o FILE`",
        };
        UsageError(format!(
            "cannot import '{}': {e}; {what}. Nothing was changed",
            file.display()
        ))
    })?;
    let now = SystemTime::now();
    if ca.cert.not_after <= now {
        return Err(UsageError(format!(
            "cannot import '{}': its CA certificate expired at {}; on the exporting host run \
             `docker-tls-manager apply` (which re-signs it) and export again. Nothing was changed",
            file.display(),
            humantime::format_rfc3339_seconds(ca.cert.not_after)
        ))
        .into());
    }
    {
        let _lock = StateLock::acquire(layout, LOCK_WAIT).await?;
        let disk = ctx.inspect();
        let current = disk.get(&Slot::Ca).info();
        if current.is_some_and(|c| c.public_key == ca.cert.public_key) {
            println!(
                "this host already uses this CA ({}); nothing to do",
                ca.cert.subject
            );
            return Ok(());
        }
        // Clients whose certificate comes from the CA being replaced lose access here.
        let holders: Vec<String> = ctx
            .client_names()
            .into_iter()
            .filter(|n| {
                matches!(
                    &disk.get(&Slot::Client(n.clone())).cert,
                    CertState::Present(_)
                )
            })
            .collect();
        if current.is_some() && !holders.is_empty() && !force {
            return Err(UsageError(format!(
                "this host's CA has issued certificates to {}: after the import they get new \
                 ones from the imported CA, and the bundles handed out so far stop working here. \
                 Run again with --force, then hand those bundles out again \
                 (`docker-tls-manager client bundle NAME`). Nothing was changed",
                holders
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        install_ca(layout, &ctx.backups(), &ca, now)?;
        tracing::info!(subject = %ca.cert.subject, fingerprint = %ca.cert.fingerprint, "CA imported");
    }
    println!(
        "CA imported: {} (SHA-256 {}); reissuing this host's certificates from it",
        ca.cert.subject, ca.cert.fingerprint
    );
    converge(ctx, Force::default(), false, false, Intent::Maintain).await
}
