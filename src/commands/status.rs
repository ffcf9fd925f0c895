//! `status`: every certificate, and Docker's side as systemd and the TLS endpoint see it.

use super::*;
use crate::pki::plan;

pub(crate) async fn status_cmd(ctx: &Ctx, json: bool) -> Result<()> {
    let host = HostIdentity::detect()?;
    let now = SystemTime::now();
    let disk = ctx.inspect();
    let plan = match plan::plan(&disk, &ctx.settings, &host, now, Force::default()) {
        Ok(p) => p,
        Err(e) => Plan {
            warnings: vec![format!("{e:#}")],
            ..Plan::default()
        },
    };
    let mut handed =
        report::handed_out_warnings(ctx.layout(), &ctx.client_names(), &ctx.settings, now);
    handed.extend(report::rollover_warnings(
        ctx.layout(),
        &ctx.client_names(),
        &ctx.settings,
        now,
    ));
    let mut report = report::report(&disk, &plan, &ctx.settings, now, handed);
    if ctx.settings.docker.manage {
        report.docker = Some(docker_status(ctx).await);
    }
    let authz = authz_status(ctx).await;
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("authz".into(), authz);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::render_text(&report));
        println!(
            "authorization plugin: {}",
            authz["enforcement_text"].as_str().unwrap_or("")
        );
        match authz["revoked"].as_array() {
            Some(list) => {
                for r in list {
                    println!(
                        "  revoked: {} serial {} at {} (valid until {})",
                        r["name"].as_str().unwrap_or(""),
                        r["serial"].as_str().unwrap_or(""),
                        r["revoked_at"].as_str().unwrap_or(""),
                        r["not_after"].as_str().unwrap_or("")
                    );
                }
            }
            None => println!("  warning: {}", authz["error"].as_str().unwrap_or("")),
        }
    }
    Ok(())
}

/// The plugin for `status`: configured or not, whether dockerd consults it, and the revoked
/// certificates (or why they cannot be read).
async fn authz_status(ctx: &Ctx) -> serde_json::Value {
    let files = crate::authz::Files::new(&ctx.settings);
    let enabled = ctx.settings.authz.enabled && ctx.settings.docker.manage;
    let e = authz_enforcement(ctx).await;
    let mut v = match crate::authz::policy::RevocationList::load(&files.revoked) {
        Ok(l) => serde_json::json!({ "enabled": enabled, "revoked": l.revoked }),
        Err(e) => serde_json::json!({
            "enabled": enabled,
            "error": format!("{e:#}; Docker refuses every request over TLS until it is repaired"),
        }),
    };
    v["enforcement"] = e.key().into();
    v["enforcement_text"] = e.describe().into();
    v
}

/// Whether dockerd consults the plugin, against the configuration (asked through dockerd with
/// the probe identity: `GET /info` lists only the plugins dockerd started with).
pub(crate) async fn authz_enforcement(ctx: &Ctx) -> crate::authz::Enforcement {
    let configured = ctx.settings.authz.enabled && ctx.settings.docker.manage;
    // Only a running Docker is asked: a connection to its TLS port would start a stopped one
    // (docker-tcp.socket activates docker.service).
    let running = async {
        let obs = DockerSide::connect(&ctx.settings)
            .await?
            .observe(&ctx.settings)
            .await?;
        anyhow::Ok(obs.docker.active_state == "active")
    }
    .await
    .unwrap_or(false);
    let consulted = if ctx.settings.docker.manage && !running {
        Err("docker.service is not running".into())
    } else if ctx.settings.docker.manage {
        let probe = docker::tls_probe(&ctx.settings);
        match tokio::task::spawn_blocking(move || probe.consulted_blocking()).await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err("[docker] manage = false".into())
    };
    crate::authz::Enforcement::decide(configured, consulted)
}

/// Docker's side for `status`: what systemd and the TLS endpoint say, and what apply would do.
async fn docker_status(ctx: &Ctx) -> report::DockerStatus {
    let mut st = report::DockerStatus::default();
    let result = async {
        let obs = DockerSide::connect(&ctx.settings)
            .await?
            .observe(&ctx.settings)
            .await?;
        st.docker_service = obs.docker.active_state.clone();
        st.socket_unit = obs.socket.active_state.clone();
        st.serving_current_certificate =
            obs.served.is_some() && obs.served.as_deref() == Some(obs.wanted.as_str());
        st.served_sha256 = obs.served.clone();
        st.deconfigured = ctx.layout().deconfigured().exists();
        match docker::plan::plan_configure(&obs, &ctx.settings) {
            Ok(p) => {
                st.restart_deferred = p.deferred;
                st.pending = p.steps.iter().map(|s| s.to_string()).collect();
                st.warnings = p.warnings;
            }
            Err(e) => st.warnings.push(e.0),
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        st.warnings.push(format!("cannot inspect Docker: {e:#}"));
    }
    st
}
