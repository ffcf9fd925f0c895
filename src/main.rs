//! docker-tls-manager: the command-line entry point. Parses arguments, sets up logging, runs
//! the command and maps errors to the documented exit codes (0 ok, 1 failed, 2 bad usage).

mod acme;
mod ari;
mod authz;
mod bundle;
mod cli;
mod commands;
mod config;
mod converge;
mod docker;
mod error;
mod files;
mod host;
mod layout;
mod manual;
mod metrics;
mod pki;
mod service;
mod status;
mod systemd;
mod watch;

use clap::Parser;

/// `journal_fields`: under journald, send each event's fields as journal fields (the
/// authorization plugin's audit: `journalctl -u docker-tls-manager-authz CLIENT=NAME`).
fn init_tracing(journal_fields: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env(manual::LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    if journal_fields
        && std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(layer) = tracing_journald::layer()
    {
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(filter)
            .with(layer.with_field_prefix(None))
            .init();
        return;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under journald the journal adds timestamps itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = cli::Cli::parse();
    init_tracing(matches!(cli.command, cli::Command::Authz(_)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(commands::run(cli.command, cli.config.as_deref())) {
        Ok(()) => error::EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            error::exit_code(&e)
        }
    };
    std::process::exit(code);
}
