//! `ca`: the staged CA key rollover (start, status, finish), the immediate replacement, and
//! sharing one CA between hosts (export on one, import on the others) so that one client
//! bundle works on every host while each host still issues its own server certificate.

use std::io::Read;

use zeroize::Zeroizing;

use super::*;
use crate::cli::{CaCommand, RolloverCommand};
use crate::pki::execute::install_ca;
use crate::pki::inspect::{self, CertState, KeyState};
use crate::pki::rollover::{self, Phase, Record};
use crate::pki::transfer::{self, OpenError};

pub(crate) async fn ca(ctx: &Ctx, cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Replace { now: false } => Err(UsageError(
            "`ca replace` needs --now: it stops every bundle handed out at once (clients no \
             longer trust Docker, Docker no longer trusts them). For a new CA key without \
             breaking a client: `docker-tls-manager ca rollover start`"
                .into(),
        )
        .into()),
        CaCommand::Replace { now: true } => {
            let force = Force {
                ca: true,
                ..Force::default()
            };
            converge(ctx, force, false, false, Intent::Maintain).await?;
            println!(
                "the CA has a new key: every bundle handed out before no longer works; hand each \
                 client a new one (`docker-tls-manager client bundle NAME`)"
            );
            Ok(())
        }
        CaCommand::Rollover(RolloverCommand::Start) => start(ctx).await,
        CaCommand::Rollover(RolloverCommand::Finish { force }) => finish(ctx, force).await,
        CaCommand::Rollover(RolloverCommand::Status) => {
            print!("{}", status_text(ctx, SystemTime::now())?);
            Ok(())
        }
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

/// Records phase 1 (under the lock), then converges: a new key, both CAs trusted, one Docker
/// restart. A crash after the record is written is finished by the next `apply`.
pub(crate) async fn start(ctx: &Ctx) -> Result<()> {
    {
        let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
        begin(ctx, SystemTime::now(), false)?;
    }
    converge(ctx, Force::default(), false, false, Intent::Maintain).await?;
    if ctx.inspect().rollover.trust.len() < 2 {
        println!(
            "CA key rollover, phase 1 recorded; it waits for the Docker restart (see above) and \
             is carried out by the next convergence"
        );
        return Ok(());
    }
    println!(
        "CA key rollover, phase 1: Docker trusts bundles of both CAs; bundles handed out from now \
         on are from the new CA (`docker-tls-manager client bundle NAME`). When every client has \
         one: `docker-tls-manager ca rollover finish`"
    );
    Ok(())
}

/// Writes the record of phase 1, after checking the CA can be rolled over. Call under the
/// state lock.
pub(crate) fn begin(ctx: &Ctx, now: SystemTime, automatic: bool) -> Result<()> {
    if let Some(r) = rollover::load_record(ctx.layout())? {
        return Err(UsageError(format!(
            "a CA key rollover is already in {} since {}; `docker-tls-manager ca rollover status` \
             shows it, `docker-tls-manager ca rollover finish` ends it",
            r.phase, r.started
        ))
        .into());
    }
    let record = rollover::start_record(&ctx.inspect(), ctx.layout(), now, automatic)?;
    rollover::write_record(ctx.layout(), &record)
}

/// Records phase 2 (refused while clients hold old bundles, unless `force`), then converges:
/// the previous CA leaves, its key is destroyed, one Docker restart.
async fn finish(ctx: &Ctx, force: bool) -> Result<()> {
    {
        let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
        let holders = request_finish(ctx, force)?;
        if !holders.is_empty() {
            println!(
                "finishing although these clients still hold a bundle from the previous CA (it \
                 stops working now): {}",
                holders.join(", ")
            );
        }
    }
    converge(ctx, Force::default(), false, false, Intent::Maintain).await?;
    if ctx.inspect().rollover.record.is_some() {
        println!(
            "CA key rollover, phase 2 recorded; it waits for the Docker restart (see above) and \
             is carried out by the next convergence"
        );
        return Ok(());
    }
    println!(
        "CA key rollover finished: Docker trusts the new CA only; the previous CA key is destroyed"
    );
    Ok(())
}

/// Switches the record to phase 2; returns the clients that still hold old bundles (only
/// with `force`, else that is an error naming them). Call under the state lock.
pub(crate) fn request_finish(ctx: &Ctx, force: bool) -> Result<Vec<String>> {
    let layout = ctx.layout();
    // Without a readable record (removed, or unreadable with --force), the old CA's files left
    // mean phase 1: finishing is the way out (the planner needs no old key for it).
    let record = match rollover::load_record(layout) {
        Ok(r) => r,
        Err(_) if force => None,
        Err(e) => return Err(e),
    };
    let unreadable = layout.rollover_record().exists();
    let mut record = match record {
        Some(r) => r,
        None if unreadable || ctx.inspect().rollover.previous_left() => Record {
            phase: Phase::Finish,
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            previous_public_key: match crate::pki::inspect::read_key(&layout.ca_previous_key()) {
                KeyState::Readable { public_key } => hex::encode(public_key),
                _ => String::new(),
            },
            previous_key_id: None,
            automatic: false,
        },
        None => {
            return Err(UsageError(
                "no CA key rollover in progress (`docker-tls-manager ca rollover start` begins one)"
                    .into(),
            )
            .into());
        }
    };
    let holders = report::old_ca_holders(layout, &ctx.client_names(), &record);
    if record.phase == Phase::Overlap && !holders.is_empty() && !force {
        return Err(UsageError(format!(
            "these clients still hold a bundle from the previous CA, which stops working when the \
             rollover finishes: {}. Hand each a new bundle (`docker-tls-manager client bundle \
             NAME`), or finish anyway with `docker-tls-manager ca rollover finish --force`",
            holders.join(", ")
        ))
        .into());
    }
    record.phase = Phase::Finish;
    rollover::write_record(layout, &record)?;
    Ok(holders)
}

/// `ca rollover status`: the phase, the CAs, who still holds an old bundle, the schedule.
fn status_text(ctx: &Ctx, now: SystemTime) -> Result<String> {
    use std::fmt::Write as _;
    let layout = ctx.layout();
    let mut s = String::new();
    let record = rollover::load_record(layout)?;
    let current = crate::pki::inspect::read_cert_info(&layout.ca_cert());
    let t = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    match &record {
        None => writeln!(s, "no CA key rollover in progress")?,
        Some(r) => {
            writeln!(
                s,
                "CA key rollover: {}{}, started {}",
                r.phase,
                if r.automatic { " (automatic)" } else { "" },
                r.started
            )?;
            if let Some(p) = crate::pki::inspect::read_cert_info(&layout.ca_previous_cert()) {
                writeln!(s, "previous CA: {} (until {})", p.subject, t(p.not_after))?;
            }
            if let Some(x) = crate::pki::inspect::read_cert_info(&layout.ca_cross()) {
                writeln!(
                    s,
                    "cross certificate (previous CA under the new key) until {}",
                    t(x.not_after)
                )?;
            }
            let holders = report::old_ca_holders(layout, &ctx.client_names(), r);
            if holders.is_empty() {
                writeln!(s, "no client holds a bundle from the previous CA")?;
            } else {
                writeln!(
                    s,
                    "clients still holding a bundle from the previous CA: {}",
                    holders.join(", ")
                )?;
            }
        }
    }
    if let Some(c) = current {
        writeln!(s, "current CA: {} (until {})", c.subject, t(c.not_after))?;
    }
    let sched = rollover::schedule(
        ctx.settings.ca_rollover.key_lifetime,
        ctx.settings.ca_rollover.overlap,
        rollover::key_born(layout),
        record.as_ref(),
        now,
    );
    match sched {
        rollover::Schedule::Off => {}
        rollover::Schedule::StartNow => writeln!(s, "automatic: phase 1 is due now")?,
        rollover::Schedule::StartsAt(x) => writeln!(s, "automatic: phase 1 starts at {}", t(x))?,
        rollover::Schedule::FinishNow => writeln!(s, "automatic: phase 2 is due now")?,
        rollover::Schedule::FinishesAt(x) => writeln!(s, "automatic: phase 2 starts at {}", t(x))?,
    }
    Ok(s)
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

/// Export and import move one CA: not while a rollover holds two.
fn refuse_during_rollover(ctx: &Ctx, what: &str) -> Result<()> {
    if rollover::load_record(ctx.layout())?.is_some() || ctx.inspect().rollover.previous_left() {
        return Err(UsageError(format!(
            "a CA key rollover is in progress: {what} moves one CA, so finish the rollover first \
             (`docker-tls-manager ca rollover status`, then `ca rollover finish`). Nothing was changed"
        ))
        .into());
    }
    Ok(())
}

async fn export(ctx: &Ctx, output: &Path, passphrase_file: Option<&Path>) -> Result<()> {
    let layout = ctx.layout();
    refuse_during_rollover(ctx, "export")?;
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
    let text = transfer::seal(&transfer::pem_of(&der), &key_pem, &pass, &comment)?;
    if output == Path::new("-") {
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        atomic_write(output, text.as_bytes(), 0o600)?;
        println!(
            "CA exported to '{}' (its key encrypted; mode 0600)",
            output.display()
        );
    }
    transfer::record_shared(layout, &info, "export")?;
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
        refuse_during_rollover(ctx, "import")?;
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
        transfer::record_shared(layout, &ca.cert, "import")?;
        tracing::info!(subject = %ca.cert.subject, fingerprint = %ca.cert.fingerprint, "CA imported");
    }
    println!(
        "CA imported: {} (SHA-256 {}); reissuing this host's certificates from it",
        ca.cert.subject, ca.cert.fingerprint
    );
    converge(ctx, Force::default(), false, false, Intent::Maintain).await
}
