//! The command line, as a clap definition (also the source of the man page and completions).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Keeps Docker's TCP API behind mutual TLS: a CA, server and client certificates, renewed
/// before they expire, and dockerd configured through systemd.
#[derive(Parser, Debug)]
#[command(name = "docker-tls-manager", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 ok, 1 failed, 2 bad usage or configuration.")]
pub struct Cli {
    /// Configuration file [default: /etc/docker-tls-manager/config.toml; absent = defaults]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "DOCKER_TLS_MANAGER_CONFIG"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Converge once: create or repair the CA and certificates, then configure Docker (also
    /// after `deconfigure`)
    Apply {
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Certificates only, no Docker restart; host address changes are left to the service
        /// (what docker-tls-manager-prepare.service runs before docker.service at boot)
        #[arg(long)]
        pki_only: bool,
    },
    /// Show every certificate: subject, SANs, serial, validity, next renewal, files
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Renew what is due (as apply does; with [acme], the CA's renewal information is asked
    /// again first); with --force, reissue TARGET now
    Renew {
        /// Reissue even if not due
        #[arg(long)]
        force: bool,
        /// What to renew; `ca` with --force gives the CA a new key and reissues everything
        #[arg(value_enum, default_value_t = Target::All)]
        target: Target,
    },
    /// Manage client identities
    #[command(subcommand)]
    Client(ClientCommand),
    /// The CA: a staged key rollover that breaks no client, the immediate replacement, and
    /// sharing it with other hosts (one client bundle for all of them)
    #[command(subcommand)]
    Ca(CaCommand),
    /// Validate the configuration and the environment; change nothing
    Check,
    /// Put Docker back as it was (socket unit, drop-in, guard unit, daemon.json keys removed;
    /// restart); certificates are kept, and the service leaves Docker alone until `apply`
    Deconfigure,
    /// The long-running service (systemd Type=notify): converge, renew before expiry, repair,
    /// follow address changes
    Run,
    /// Docker's authorization plugin (revocation, roles, audit)
    #[command(subcommand, hide = true)]
    Authz(AuthzCommand),
    /// Write the man pages, shell completions and the packaged config.toml into DIR (used to build the packages)
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
    /// Exit 0 only if dockerd will serve the TCP socket with mutual TLS (run by systemd
    /// before docker-tcp.socket listens and before every start of dockerd)
    #[command(hide = true)]
    Guard {
        /// The CA certificate daemon.json must name as tlscacert
        #[arg(long, value_name = "PATH")]
        ca: PathBuf,
        /// The daemon.json dockerd reads (with --effective: the one it reads without
        /// --config-file in its ExecStart)
        #[arg(long, value_name = "PATH")]
        daemon_json: PathBuf,
        /// Ask systemd which daemon.json docker.service's ExecStart really gives dockerd
        #[arg(long)]
        effective: bool,
        /// Files that must be ours and present (the drop-in and the guard unit)
        #[arg(long, value_name = "PATH")]
        require: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuthzCommand {
    /// Serve the plugin on the socket systemd passes (docker-tls-manager-authz.socket)
    Serve {
        /// Listen on this unix socket instead (tests)
        #[arg(long, value_name = "PATH")]
        listen: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Add a client and issue its certificate
    Add {
        name: String,
        /// What it may do: admin (everything), operator (monitoring plus start, stop, restart,
        /// kill, pause, unpause containers), monitoring (list and inspect). The config's
        /// [authz] roles win.
        #[arg(long, value_name = "ROLE", default_value = "admin")]
        role: String,
    },
    /// List clients, their role, when their certificates expire, and revoked certificates
    List,
    /// Revoke a client's certificates at once (refused by Docker from the next request) and
    /// issue it a new one, to hand out with `client bundle`
    Revoke { name: String },
    /// Remove a client: its certificates revoked, its files removed (backed up)
    Remove { name: String },
    /// Share revocations with the other hosts of a group sharing one CA (`ca export`/`ca
    /// import`): export this host's revocation list, import another host's (merged)
    #[command(subcommand)]
    Revocations(RevocationsCommand),
    /// Write a client's bundle: ca.pem, cert.pem, key.pem
    Bundle {
        name: String,
        /// Output file [default: ./NAME.tar.gz or ./NAME.dockercontext]
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// tar.gz: for ~/.docker, DOCKER_CERT_PATH, Portainer; context: for `docker context import`
        #[arg(long, value_enum, default_value_t = BundleFormat::TarGz)]
        format: BundleFormat,
        /// Host name clients use to reach Docker [default: this host's FQDN or hostname]
        #[arg(long)]
        host: Option<String>,
    },
    /// Print the environment variables that point the docker CLI at this host
    Env {
        name: String,
        /// Host name clients use to reach Docker [default: this host's FQDN or hostname]
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RevocationsCommand {
    /// Write the revocation list (JSON; no secret in it)
    Export {
        /// Output file (`-`: standard output)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Add the revocations of another host's list to this host's (Docker refuses them from the
    /// next request)
    Import {
        /// A file `client revocations export` wrote
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// A new CA key without breaking a client: phase 1 trusts both CAs, phase 2 the new one
    #[command(subcommand)]
    Rollover(RolloverCommand),
    /// Replace the CA key at once (the key may be compromised): every bundle handed out stops
    /// working at once and must be handed out again (same as `renew --force ca`)
    Replace {
        /// Required: says you mean it
        #[arg(long)]
        now: bool,
    },
    /// Write the CA certificate and its key, encrypted with a passphrase (PKCS#8, readable by
    /// `openssl pkey`), for `ca import` on another host
    Export {
        /// Output file, written with mode 0600 (`-`: standard output)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Read the passphrase from FILE (`-`: standard input) [default: make a new one and
        /// print it once]
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Replace this host's CA with one exported by `ca export` on another host, then reissue
    /// this host's certificates from it and restart Docker (verified, rolled back on failure)
    Import {
        /// The file `ca export` wrote
        file: PathBuf,
        /// Read the passphrase from FILE (`-`: standard input)
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
        /// Replace the CA although clients hold certificates from the current one (their
        /// bundles stop working here and must be handed out again)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloverCommand {
    /// Phase 1: a new CA key; Docker trusts both CAs, bundles handed out from now on are from
    /// the new one, bundles handed out before keep working (one Docker restart)
    Start,
    /// The phase, and the clients still holding a bundle from the previous CA
    Status,
    /// Phase 2: the previous CA is no longer trusted and its key is destroyed (one Docker
    /// restart); refused while clients still hold bundles from it, unless --force
    Finish {
        /// Finish even though the clients named still hold bundles from the previous CA
        #[arg(long)]
        force: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Server,
    Clients,
    Ca,
    All,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleFormat {
    #[value(name = "tar.gz")]
    TarGz,
    Context,
}
