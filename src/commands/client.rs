//! `client`: add, list, remove, bundle and env of client identities.

use super::*;
use crate::cli::RevocationsCommand;
use crate::files::backup;
use crate::pki::inspect;

pub(crate) async fn client(ctx: &Ctx, cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add { name, role } => {
            config::validate_client_name(&name).map_err(UsageError)?;
            let role =
                crate::authz::Role::parse(&role).map_err(|m| UsageError(format!("--role: {m}")))?;
            if ctx.client_names().contains(&name)
                && ctx
                    .layout()
                    .cert_and_key(&Slot::Client(name.clone()))
                    .0
                    .exists()
            {
                bail!(
                    "client '{name}' already exists; `docker-tls-manager client bundle {name}` hands it out"
                );
            }
            {
                let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
                ensure_dir(&ctx.layout().clients_dir(), KEY_DIR_MODE)?;
                ensure_dir(&ctx.layout().client_dir(&name), KEY_DIR_MODE)?;
                let files = crate::authz::Files::new(&ctx.settings);
                let given = (role != crate::authz::Role::Admin).then_some(role);
                crate::authz::policy::set_role(
                    &files,
                    &name,
                    given,
                    &ctx.backups(),
                    SystemTime::now(),
                )?;
            }
            converge(ctx, Force::default(), false, false, Intent::Maintain).await?;
            let files = crate::authz::Files::new(&ctx.settings);
            let effective = crate::authz::policy::role_of(&ctx.settings, &files, &name);
            println!(
                "client '{name}' added with role {effective}: `docker-tls-manager client bundle {name}` hands it out"
            );
            if effective != role {
                println!(
                    "warning: [authz] roles in the configuration gives '{name}' the role {effective}, which wins over --role {role}"
                );
            }
            Ok(())
        }
        ClientCommand::List => {
            let now = SystemTime::now();
            let disk = ctx.inspect();
            let files = crate::authz::Files::new(&ctx.settings);
            let given = crate::authz::policy::load_roles(&files.roles);
            if let Err(e) = &given {
                println!(
                    "warning: {e:#}: Docker refuses every client over TLS until it is repaired, \
                     and no client certificate is issued"
                );
            }
            for name in ctx.client_names() {
                let Ok(given) = &given else {
                    println!("{name}\trole unknown (the roles cannot be read)");
                    continue;
                };
                let role = crate::authz::policy::wanted_role(&ctx.settings, given, &name);
                let obs = disk.get(&Slot::Client(name.clone()));
                let source = if ctx.settings.clients.names.contains(&name) {
                    "config"
                } else {
                    "added"
                };
                let role = match obs.info().map(|i| i.role.as_deref()) {
                    Some(None) if role != crate::authz::Role::Admin => format!(
                        "{role} (its certificate carries none: the next apply issues one with {role})"
                    ),
                    Some(Some(carried)) if carried != role.name() => {
                        match crate::authz::Role::effective(Some(carried), Some(role)) {
                            Ok(e) => format!(
                                "{e} (its certificate carries {carried}, this host gives {role}: \
                                 the next apply issues one with {role})"
                            ),
                            Err(why) => format!("none: {why}"),
                        }
                    }
                    _ => role.to_string(),
                };
                match obs.info() {
                    Some(i) => println!(
                        "{name}\t{source}\trole {role}\texpires {}\t{} days left",
                        humantime::format_rfc3339_seconds(i.not_after),
                        report::days_between(now, i.not_after)
                    ),
                    None => println!("{name}\t{source}\trole {role}\tnot issued yet (run apply)"),
                }
            }
            for r in crate::authz::policy::RevocationList::load(&files.revoked)?.revoked {
                println!(
                    "{}\trevoked\tserial {}\tat {}\t(valid until {})",
                    r.name, r.serial, r.revoked_at, r.not_after
                );
            }
            Ok(())
        }
        ClientCommand::Revocations(RevocationsCommand::Export { output }) => {
            let files = crate::authz::Files::new(&ctx.settings);
            let list = {
                let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
                crate::authz::policy::RevocationList::load(&files.revoked)?
            };
            let text = serde_json::to_string_pretty(&list)? + "\n";
            if output == Path::new("-") {
                print!("{text}");
            } else {
                atomic_write(&output, text.as_bytes(), 0o644)?;
                println!(
                    "{} revoked certificate(s) written to '{}': on the other hosts sharing this CA, \
                     `docker-tls-manager client revocations import FILE`",
                    list.revoked.len(),
                    output.display()
                );
            }
            Ok(())
        }
        ClientCommand::Revocations(RevocationsCommand::Import { file }) => {
            let text = std::fs::read(&file)
                .map_err(|e| UsageError(format!("cannot read '{}': {e}", file.display())))?;
            let incoming: crate::authz::policy::RevocationList = serde_json::from_slice(&text)
                .map_err(|e| {
                    UsageError(format!(
                        "'{}' is not a revocation list from `client revocations export` ({e}); \
                         nothing was changed",
                        file.display()
                    ))
                })?;
            let files = crate::authz::Files::new(&ctx.settings);
            let added = {
                let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
                crate::authz::policy::merge(&files, &incoming, &ctx.backups(), SystemTime::now())
                    .map_err(|e| {
                        UsageError(format!("'{}': {e:#}; nothing was changed", file.display()))
                    })?
            };
            for r in &added {
                println!(
                    "revoked certificate of '{}': serial {} (valid until {}); Docker refuses it \
                     from the next request",
                    r.name, r.serial, r.not_after
                );
            }
            println!(
                "{} new revocation(s), {} already known",
                added.len(),
                incoming.revoked.len() - added.len()
            );
            if !plugin_on(ctx) {
                println!(
                    "warning: Docker does not ask the revocation list here ([docker] manage or [authz] enabled is false)"
                );
            }
            Ok(())
        }
        ClientCommand::Remove { name } => {
            config::validate_client_name(&name).map_err(UsageError)?;
            if ctx.settings.clients.names.contains(&name) {
                let file = ctx
                    .settings
                    .source
                    .as_ref()
                    .map_or("the configuration".into(), |p| p.display().to_string());
                return Err(UsageError(format!(
                    "client '{name}' is listed in [clients] names in '{file}': remove it there first, then run this again"
                ))
                .into());
            }
            let dir = ctx.layout().client_dir(&name);
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "no client '{name}' (see `docker-tls-manager client list`)"
                ))
                .into());
            }
            let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
            let not_after = ctx
                .inspect()
                .get(&Slot::Client(name.clone()))
                .info()
                .map(|i| i.not_after);
            let now = SystemTime::now();
            let revoked = revoke_all(ctx, &name, now)?;
            let files = crate::authz::Files::new(&ctx.settings);
            crate::authz::policy::set_role(&files, &name, None, &ctx.backups(), now)?;
            for entry in std::fs::read_dir(&dir)? {
                backup(&entry?.path(), &ctx.backups(), now)?;
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove '{}'", dir.display()))?;
            println!(
                "client '{name}' removed (files backed up in '{}')",
                ctx.layout().backup_dir().display()
            );
            print_revoked(ctx, &name, &revoked);
            if let Some(t) = not_after.filter(|t| *t > now)
                && !plugin_on(ctx)
            {
                println!(
                    "warning: Docker does not ask the revocation list here ([docker] manage or [authz] enabled \
                     is false): its certificate stays valid until {}; to shut it out now, `docker-tls-manager \
                     renew --force ca` and hand the other clients new bundles",
                    humantime::format_rfc3339_seconds(t)
                );
            }
            Ok(())
        }
        ClientCommand::Revoke { name } => {
            // A name removed (or never added here) whose certificates the record of issued
            // certificates still names: revoked, and nothing issued.
            if !ctx.client_names().contains(&name)
                && crate::authz::policy::IssuedList::load(&ctx.layout().authz_issued())
                    .is_ok_and(|l| l.issued.iter().any(|i| i.name == name))
            {
                config::validate_client_name(&name).map_err(UsageError)?;
                let revoked = {
                    let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
                    revoke_all(ctx, &name, SystemTime::now())?
                };
                print_revoked(ctx, &name, &revoked);
                return Ok(());
            }
            known_client(ctx, &name)?;
            let now = SystemTime::now();
            let revoked = {
                let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
                let revoked = revoke_all(ctx, &name, now)?;
                // A new certificate for the name, to hand out: the old files go (backed up)
                // and the convergence issues new ones.
                let (cert, key) = ctx.layout().cert_and_key(&Slot::Client(name.clone()));
                for p in [&cert, &key] {
                    backup(p, &ctx.backups(), now)?;
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e)
                                .with_context(|| format!("cannot remove '{}'", p.display()));
                        }
                        _ => {}
                    }
                }
                revoked
            };
            print_revoked(ctx, &name, &revoked);
            converge(ctx, Force::default(), false, false, Intent::Maintain).await?;
            println!(
                "client '{name}' has a new certificate: `docker-tls-manager client bundle {name}` hands it out"
            );
            if !plugin_on(ctx) {
                println!(
                    "warning: Docker does not ask the revocation list here ([docker] manage or [authz] enabled is false)"
                );
            }
            Ok(())
        }
        ClientCommand::Bundle {
            name,
            output,
            format,
            host,
        } => {
            known_client(ctx, &name)?;
            // Under the lock: never a key and a certificate from either side of a renewal.
            let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
            let files = client_files(ctx, &name)?;
            let host = client_host(host)?;
            let port = ctx.settings.docker.listen[0].port;
            let url = format!("tcp://{}:{port}", bracket(&host));
            let (data, default_name) = match format {
                BundleFormat::TarGz => (bundle::tar_gz(&files)?, format!("{name}.tar.gz")),
                BundleFormat::Context => (
                    bundle::context_archive(&files, &format!("{name}@{host}"), &url)?,
                    format!("{name}.dockercontext"),
                ),
            };
            let out = output.unwrap_or_else(|| PathBuf::from(default_name));
            atomic_write(&out, &data, 0o600)?;
            record_handed_out(ctx, &name, &files.cert)?;
            println!(
                "wrote {} (holds the private key: keep it safe)",
                out.display()
            );
            match format {
                BundleFormat::TarGz => println!(
                    "on the client: mkdir -p ~/.docker && tar -xzf {} -C ~/.docker && export DOCKER_HOST={url} DOCKER_TLS_VERIFY=1",
                    out.display()
                ),
                BundleFormat::Context => println!(
                    "on the client: docker context import {host} {} && docker context use {host}",
                    out.display()
                ),
            }
            Ok(())
        }
        ClientCommand::Env { name, host } => {
            known_client(ctx, &name)?;
            let _lock = StateLock::acquire(ctx.layout(), LOCK_WAIT).await?;
            client_files(ctx, &name)?;
            let host = client_host(host)?;
            let port = ctx.settings.docker.listen[0].port;
            println!("export DOCKER_HOST=tcp://{}:{port}", bracket(&host));
            println!("export DOCKER_TLS_VERIFY=1");
            println!(
                "export DOCKER_CERT_PATH={}",
                ctx.layout().client_dir(&name).display()
            );
            Ok(())
        }
    }
}

/// Remembers which certificate went out in a bundle, so its expiry can be warned about.
fn record_handed_out(ctx: &Ctx, name: &str, cert_pem: &[u8]) -> Result<()> {
    let der = inspect::first_cert_der(cert_pem).map_err(|e| anyhow::anyhow!(e))?;
    let info = inspect::cert_info(&der).map_err(|e| anyhow::anyhow!(e))?;
    let rec = report::HandedOut {
        fingerprint_sha256: info.fingerprint,
        not_after: humantime::format_rfc3339_seconds(info.not_after).to_string(),
        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ca_key_id: info.authority_key_id.as_ref().map(hex::encode),
    };
    atomic_write(
        &ctx.layout().handed_out(name),
        serde_json::to_string_pretty(&rec)?.as_bytes(),
        0o600,
    )
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn client_host(given: Option<String>) -> Result<String> {
    match given {
        Some(h) => Ok(h),
        None => {
            let h = HostIdentity::detect()?;
            Ok(h.fqdn.name().map_or(h.hostname.clone(), str::to_string))
        }
    }
}

/// A valid name of a client in the config or on disk.
fn known_client(ctx: &Ctx, name: &str) -> Result<()> {
    config::validate_client_name(name).map_err(UsageError)?;
    if !ctx.client_names().iter().any(|n| n == name) {
        return Err(UsageError(format!(
            "no client '{name}': add it with `docker-tls-manager client add {name}`"
        ))
        .into());
    }
    Ok(())
}

/// A client's three files, checked to work together ([`bundle::check`]). Call it under the
/// state lock, so a renewal cannot run between the reads.
fn client_files(ctx: &Ctx, name: &str) -> Result<ClientFiles> {
    known_client(ctx, name)?;
    let slot = Slot::Client(name.to_string());
    let (cert, key) = ctx.layout().cert_and_key(&slot);
    let ca = ctx.layout().ca_copy(&slot).expect("clients have a CA copy");
    let read = |p: &Path| {
        std::fs::read(p).with_context(|| {
            format!(
                "cannot read '{}': run `docker-tls-manager apply` to issue client '{name}'",
                p.display()
            )
        })
    };
    let files = ClientFiles {
        ca: read(&ca)?,
        cert: read(&cert)?,
        key: read(&key)?,
    };
    let current = ctx.layout().ca_cert();
    let current_ca = read(&current)?;
    let trust = crate::pki::inspect::server_trust(ctx.layout(), Some(&current_ca))
        .context("cannot read [acme] issuer_root")?;
    let why = match bundle::check(&files, &current_ca, &trust, SystemTime::now()) {
        Ok(()) => return Ok(files),
        Err(bundle::Unfit::CertUnreadable(e)) => format!("'{}': {e}", cert.display()),
        Err(bundle::Unfit::KeyUnreadable(e)) => format!("'{}': {e}", key.display()),
        Err(bundle::Unfit::KeyMismatch) => format!(
            "the key '{}' does not match the certificate '{}'",
            key.display(),
            cert.display()
        ),
        Err(bundle::Unfit::NotSignedByCa) => format!(
            "the certificate '{}' is not signed by the current CA '{}'",
            cert.display(),
            current.display()
        ),
        Err(bundle::Unfit::StaleCaCopy) => format!(
            "'{}' is not the current CA certificate '{}' (the certificate '{}' is)",
            ca.display(),
            current.display(),
            cert.display()
        ),
        Err(bundle::Unfit::Expired(t)) => format!(
            "the certificate '{}' expired at {}",
            cert.display(),
            humantime::format_rfc3339_seconds(t)
        ),
        Err(bundle::Unfit::NotYetValid(t)) => format!(
            "the certificate '{}' is not valid before {}",
            cert.display(),
            humantime::format_rfc3339_seconds(t)
        ),
    };
    bail!(
        "client '{name}' cannot be handed out: {why}; nothing written: `docker-tls-manager apply` repairs it"
    )
}

/// Revokes every certificate of `name` found (current and backed up). Call under the lock.
fn revoke_all(
    ctx: &Ctx,
    name: &str,
    now: SystemTime,
) -> Result<Vec<crate::authz::policy::Revoked>> {
    let files = crate::authz::Files::new(&ctx.settings);
    let certs = crate::authz::policy::client_certificates(ctx.layout(), name);
    crate::authz::policy::revoke(&files, name, &certs, &ctx.backups(), now)
}

fn print_revoked(ctx: &Ctx, name: &str, revoked: &[crate::authz::policy::Revoked]) {
    for r in revoked {
        println!(
            "revoked certificate of '{name}': serial {} (valid until {}); Docker refuses it from the next request",
            r.serial, r.not_after
        );
    }
    let _ = ctx;
}

fn plugin_on(ctx: &Ctx) -> bool {
    ctx.settings.authz.enabled && ctx.settings.docker.manage
}
