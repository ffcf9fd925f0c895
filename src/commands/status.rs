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
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_text(&report));
    }
    Ok(())
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
