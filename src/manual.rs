//! The manual pages, generated where the code is the truth so they cannot drift from it:
//! docker-tls-manager(8) from the clap definition (commands and options), the file locations
//! of the default configuration, the exit codes (`crate::error::EXIT_STATUS`) and the prose
//! below; docker-tls-manager.toml(5) from config.example.toml (`crate::config::EXAMPLE`), whose
//! keys and defaults the config tests hold to the parser. Checked against golden files
//! (tests/fixtures/man) and by groff (tests/manual.rs).

use std::path::Path;

use clap::{Arg, ArgAction, Command, CommandFactory};
use roff::{Inline, Roff, bold, italic, roman};

use crate::config::{self, Settings};
use crate::docker::render;
use crate::error::EXIT_STATUS;
use crate::layout::{KEY_DIR_MODE, KEY_MODE};
use crate::pki::Slot;
use crate::service::SERVICE_UNIT;

const NAME: &str = "docker-tls-manager";
/// The unit running `apply --pki-only` before docker.service.
const PREPARE_UNIT: &str = "docker-tls-manager-prepare.service";
/// The variable setting the log filter (tracing's `EnvFilter` syntax).
pub const LOG_ENV: &str = "DTM_LOG";

/// A manual page: its file name (`NAME.SECTION`) and roff text.
pub struct Page {
    pub file_name: String,
    pub text: String,
}

/// Every page the packages ship.
pub fn pages() -> Vec<Page> {
    vec![
        Page {
            file_name: format!("{NAME}.8"),
            text: main_page(),
        },
        Page {
            file_name: format!("{NAME}.toml.5"),
            text: config_page(),
        },
    ]
}

/// The `.TH` line: written by hand, since `roff` drops the empty date argument, which would
/// shift the others.
fn title(name: &str, section: &str, manual: &str) -> String {
    let escape = |s: &str| s.replace('-', "\\-");
    format!(
        ".TH {} {section} \"\" \"{} {}\" \"{manual}\"\n",
        escape(&name.to_uppercase()),
        escape(NAME),
        env!("CARGO_PKG_VERSION")
    )
}

fn section(roff: &mut Roff, name: &str) {
    roff.control("SH", [name]);
}

fn para(roff: &mut Roff, inlines: impl Into<Vec<Inline>>) {
    roff.control("PP", []);
    roff.text(inlines);
}

/// A tagged paragraph: `tag` on its own line, `body` indented below it.
fn item(roff: &mut Roff, tag: impl Into<Vec<Inline>>, body: impl Into<Vec<Inline>>) {
    roff.control("TP", []);
    roff.text(tag);
    roff.text(body);
}

/// A literal block (commands, file excerpts), indented.
fn literal(roff: &mut Roff, lines: &str) {
    roff.control("RS", []);
    roff.control("nf", []);
    for l in lines.lines() {
        roff.text([roman(l)]);
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn defaults() -> Settings {
    config::parse("", Path::new(config::DEFAULT_CONFIG_PATH))
        .expect("the empty configuration is valid")
}

/// The command line as clap knows it, `help` subcommand and global options propagated.
fn cli() -> Command {
    let mut cmd = crate::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `--long VALUE`, `-s, --long VALUE` or `NAME` for a positional argument.
fn arg_tag(arg: &Arg) -> Vec<Inline> {
    let mut tag = Vec::new();
    let value = || {
        arg.get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    if arg.is_positional() {
        tag.push(italic(value()));
        return tag;
    }
    if let Some(s) = arg.get_short() {
        tag.push(bold(format!("-{s}")));
        tag.push(roman(", "));
    }
    if let Some(l) = arg.get_long() {
        tag.push(bold(format!("--{l}")));
    }
    if arg.get_action().takes_values() {
        tag.push(roman(" "));
        tag.push(italic(value()));
    }
    tag
}

/// The help text of an argument, with its default, environment variable and values.
fn arg_body(arg: &Arg) -> String {
    let mut body = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
        body.push_str(&format!(" [default: {}]", defaults.join(", ")));
    }
    if let Some(env) = arg.get_env() {
        body.push_str(&format!(" [env: {}]", env.to_string_lossy()));
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !values.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
        body.push_str(&format!(" [possible values: {}]", values.join(", ")));
    }
    body
}

fn shown(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !arg.is_global_set()
        && !matches!(arg.get_id().as_str(), "help" | "version")
}

/// `apply [--dry-run] [--pki-only]`: a command's synopsis, each option by its long name.
fn usage(words: &str, cmd: &Command) -> Vec<Inline> {
    let mut u = vec![bold(words)];
    for arg in cmd.get_arguments().filter(|a| shown(a)) {
        u.push(roman(" "));
        let required = arg.is_required_set();
        if !required {
            u.push(roman("["));
        }
        let mut tag = arg_tag(arg);
        if let Some(comma) = tag.iter().position(|i| *i == roman(", ")) {
            // `-o, --output FILE`: keep `--output FILE`.
            tag.drain(..=comma);
        }
        u.extend(tag);
        if !required {
            u.push(roman("]"));
        }
    }
    u
}

/// Every visible command, nested ones (`client add`) by their full words.
fn commands(roff: &mut Roff, prefix: &str, cmd: &Command) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let words = format!("{prefix}{}", sub.get_name());
        if sub.has_subcommands() {
            commands(roff, &format!("{words} "), sub);
            continue;
        }
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        item(roff, usage(&words, sub), [roman(about)]);
        // Arguments with something to say (a bare NAME is in the synopsis already).
        let args: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| shown(a) && !arg_body(a).is_empty())
            .collect();
        if !args.is_empty() {
            roff.control("RS", []);
            for arg in args {
                item(roff, arg_tag(arg), [roman(arg_body(arg))]);
            }
            roff.control("RE", []);
        }
    }
}

fn main_page() -> String {
    let cmd = cli();
    let s = defaults();
    let layout = &s.paths;
    let (server_cert, server_key) = layout.cert_and_key(&Slot::Server);
    let listen: Vec<&str> = s.docker.listen.iter().map(|l| l.spec.as_str()).collect();
    let listen = listen.join(", ");
    let daemon_json = path(&s.paths.daemon_json);
    let socket = path(&layout.socket_unit());
    let dropin = path(&layout.dropin());
    let guard = path(&layout.guard_unit());
    let backup = path(&layout.backup_dir());
    let tls_keys = render::TLS_KEYS.join(", ");
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();

    let mut r = Roff::new();
    section(&mut r, "NAME");
    r.text([roman(format!("{NAME} - {}", about.trim_end_matches('.')))]);

    section(&mut r, "SYNOPSIS");
    r.text([
        bold(NAME),
        roman(" ["),
        bold("--config"),
        roman(" "),
        italic("PATH"),
        roman("] "),
        italic("COMMAND"),
        roman(" ["),
        italic("ARGS"),
        roman("]"),
    ]);

    section(&mut r, "DESCRIPTION");
    r.text([
        bold(NAME),
        roman(format!(
            " serves Docker's API on TCP ({listen}) behind mutual TLS and keeps it that way. \
             What it changes on the host:"
        )),
    ]);
    let changes: [(String, String); 6] = [
        (
            "Certificates".into(),
            format!(
                "A CA (key in {}, certificate {}), a server certificate with the host's names \
                 and addresses ({}, {}), and client certificates in {}/NAME. Keys are mode {:04o}.",
                path(&layout.ca_key()),
                path(&layout.ca_cert()),
                path(&server_cert),
                path(&server_key),
                path(&layout.clients_dir()),
                KEY_MODE,
            ),
        ),
        (
            daemon_json.clone(),
            format!(
                "The keys {tls_keys} and {} are merged in; the file is never replaced, other \
                 keys, its mode and owner are kept (a symlink stays a symlink: its target is \
                 updated).",
                render::LIVE_RESTORE_KEY
            ),
        ),
        (
            socket.clone(),
            format!(
                "The TCP listener (ListenStream={listen}) dockerd is started with; systemd keeps \
                 it open across restarts of {}, so clients queue instead of being refused.",
                render::DOCKER_SERVICE
            ),
        ),
        (
            dropin.clone(),
            format!(
                "Makes {} use the socket unit and run the guard before every start of dockerd.",
                render::DOCKER_SERVICE
            ),
        ),
        (
            guard.clone(),
            format!(
                "The guard: if {daemon_json} no longer turns TLS on with this CA (rewritten by \
                 hand or by configuration management), the port stays closed while Docker \
                 starts; journalctl -u {} says why.",
                render::GUARD_UNIT
            ),
        ),
        (
            "Restarts".into(),
            format!(
                "{} is restarted through systemd's D-Bus API only when what it serves changes, \
                 then a mutual-TLS GET /_ping checks that the new certificate is served; a \
                 failure puts the previous files back and starts Docker again. live-restore \
                 keeps containers running; without it (live_restore = \"off\", or swarm mode) \
                 a restart that would kill running containers is deferred.",
                render::DOCKER_SERVICE
            ),
        ),
    ];
    for (tag, body) in changes {
        item(&mut r, [bold(tag)], [roman(body)]);
    }
    para(
        &mut r,
        [roman(format!(
            "Every file it replaces or removes is first copied to {backup}/TIMESTAMP/PATH. \
             deconfigure removes the socket unit, the drop-in, the guard unit and the \
             daemon.json keys it added, restarts Docker and keeps the certificates; removing \
             the package does the same."
        ))],
    );
    para(
        &mut r,
        [roman(format!(
            "{SERVICE_UNIT} (the run command) converges at start, renews each certificate \
             renew_before its expiry, repairs deleted or swapped files, reissues the server \
             certificate when the host's addresses change, and re-reads its configuration on \
             systemctl reload. Enabling it also enables {PREPARE_UNIT} (apply --pki-only), \
             which repairs missing or expired certificate files before every start of {}. \
             Installing the package enables and starts nothing.",
            render::DOCKER_SERVICE
        ))],
    );

    section(&mut r, "OPTIONS");
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        item(&mut r, arg_tag(arg), [roman(arg_body(arg))]);
    }

    section(&mut r, "COMMANDS");
    commands(&mut r, "", &cmd);

    section(&mut r, "CONFIGURATION");
    r.text([
        roman(format!(
            "{} (or --config), in TOML; every key is optional and the file may be absent: each \
             key then has its default. The packaged file lists every key, commented out at its \
             default. After editing: ",
            config::DEFAULT_CONFIG_PATH
        )),
        bold(format!("{NAME} check")),
        roman("; the service re-reads it by itself. Every key: "),
        bold(format!("{NAME}.toml")),
        roman("(5)."),
    ]);

    section(&mut r, "FILES");
    let files: Vec<(String, String)> = vec![
        (
            config::DEFAULT_CONFIG_PATH.into(),
            "The configuration.".into(),
        ),
        (
            path(&s.paths.cert_dir),
            format!(
                "What dockerd reads: {}, {}, {} (directory mode {:04o}).",
                file_name(&layout.ca_cert()),
                file_name(&server_cert),
                file_name(&server_key),
                KEY_DIR_MODE
            ),
        ),
        (
            path(&s.paths.state_dir),
            format!(
                "The CA key ({}), the CA's recorded subject ({}), client identities ({}/NAME: \
                 ca.pem, cert.pem, key.pem), the identity of the post-restart check, what it \
                 added to Docker's configuration ({}), the marker left by deconfigure ({}), \
                 results of costly checks of unchanged files ({}, no secrets), and the lock.",
                file_name(&layout.ca_key()),
                file_name(&layout.ca_subject_record()),
                file_name(&layout.clients_dir()),
                file_name(&layout.docker_owned()),
                file_name(&layout.deconfigured()),
                file_name(&layout.check_memo()),
            ),
        ),
        (
            format!("{backup}/TIMESTAMP/PATH"),
            "Copies of replaced and removed files, old private keys included, pruned per file \
             by [backup] keep and keep_for; removal is not secure erasure."
                .into(),
        ),
        (socket, "The TCP socket unit.".into()),
        (dropin, "The docker.service drop-in.".into()),
        (guard, "The check before every start of dockerd.".into()),
        (
            daemon_json,
            format!(
                "Docker's configuration, where it merges {tls_keys} and {}.",
                render::LIVE_RESTORE_KEY
            ),
        ),
    ];
    let files = files
        .into_iter()
        .chain(s.service.metrics_file.as_ref().map(|m| {
            (
                path(m),
                "Prometheus metrics for node_exporter's textfile collector, written when the \
             directory exists."
                    .to_string(),
            )
        }));
    for (tag, body) in files {
        item(&mut r, [bold(tag)], [roman(body)]);
    }

    section(&mut r, "ENVIRONMENT");
    for arg in cmd.get_arguments().filter(|a| a.get_env().is_some()) {
        let env = arg.get_env().unwrap().to_string_lossy().into_owned();
        item(
            &mut r,
            [bold(env)],
            [roman(format!(
                "As --{}.",
                arg.get_long().unwrap_or_default()
            ))],
        );
    }
    item(
        &mut r,
        [bold(LOG_ENV)],
        [roman(
            "What is logged to standard error, as a tracing filter (error, warn, info, debug, \
             trace) [default: info].",
        )],
    );

    section(&mut r, "EXIT STATUS");
    for (code, _, meaning) in EXIT_STATUS {
        item(&mut r, [bold(code.to_string())], [roman(meaning)]);
    }

    section(&mut r, "EXAMPLES");
    r.text([roman("Set up a Docker host, then look at what it did:")]);
    literal(
        &mut r,
        &format!(
            "{NAME} check\nsystemctl enable --now {}\n{NAME} status",
            SERVICE_UNIT.trim_end_matches(".service")
        ),
    );
    para(
        &mut r,
        [roman(
            "Hand a client its bundle, and use Docker from the client:",
        )],
    );
    literal(
        &mut r,
        &format!(
            "{NAME} client add laptop\n{NAME} client bundle laptop -o laptop.tar.gz\n\
             mkdir -p ~/.docker && tar -xzf laptop.tar.gz -C ~/.docker\n\
             export DOCKER_HOST=tcp://dockerhost.example.net:2376 DOCKER_TLS_VERIFY=1\n\
             docker version"
        ),
    );
    para(
        &mut r,
        [roman(
            "Reissue the server certificate now, see what apply would change, and put Docker \
             back as it was:",
        )],
    );
    literal(
        &mut r,
        &format!("{NAME} renew --force server\n{NAME} apply --dry-run\n{NAME} deconfigure"),
    );

    section(&mut r, "SEE ALSO");
    r.text([
        bold(format!("{NAME}.toml")),
        roman("(5), "),
        bold("dockerd"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5)"),
    ]);
    para(
        &mut r,
        [roman(format!(
            "/usr/share/doc/{NAME}/README.md: the guarantees, common client errors and their \
             fixes; reliability.md: what happens on failure."
        ))],
    );
    title(NAME, "8", "System Administration") + &r.render()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The key of a `key = value` line of config.example.toml (as `commented_example` finds them).
fn key_line(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(" = ")?;
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some((k, v))
}

/// One part of config.example.toml: a paragraph of comments, a table header, or keys with
/// the comment lines just above them.
#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Table(String),
    Keys(Vec<(String, String)>, String),
}

/// Splits config.example.toml: comment lines directly above a key describe it and the keys
/// directly below it (`key_type` and `validity` under one comment); other comment blocks are
/// paragraphs.
fn config_parts(example: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    // The previous line was a key: a key right below it joins its group.
    let mut after_key = false;
    for line in example.lines() {
        if let Some(c) = line.strip_prefix('#') {
            comment.push(c.trim());
            after_key = false;
            continue;
        }
        if let Some((k, v)) = key_line(line) {
            match parts.last_mut() {
                Some(Part::Keys(keys, _)) if after_key => keys.push((k.into(), v.into())),
                _ => parts.push(Part::Keys(vec![(k.into(), v.into())], comment.join(" "))),
            }
            comment.clear();
            after_key = true;
            continue;
        }
        after_key = false;
        if !comment.is_empty() {
            parts.push(Part::Text(comment.join(" ")));
            comment.clear();
        }
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            parts.push(Part::Table(t.into()));
        } else if !line.trim().is_empty() {
            panic!("config.example.toml: cannot document the line {line:?}");
        }
    }
    if !comment.is_empty() {
        parts.push(Part::Text(comment.join(" ")));
    }
    parts
}

fn config_page() -> String {
    let page = format!("{NAME}.toml");
    let mut r = Roff::new();
    section(&mut r, "NAME");
    r.text([roman(format!("{page} - configuration of {NAME}"))]);
    section(&mut r, "SYNOPSIS");
    r.text([roman(config::DEFAULT_CONFIG_PATH)]);
    section(&mut r, "DESCRIPTION");
    // Paragraphs before the first table describe the file; each table is a subsection of KEYS.
    let mut first = true;
    let mut in_keys = false;
    for part in config_parts(config::EXAMPLE) {
        match part {
            Part::Text(t) if first => {
                // Its first line names the file, as SYNOPSIS does.
                let t = t
                    .strip_prefix(&format!(
                        "{NAME} configuration: {} ",
                        config::DEFAULT_CONFIG_PATH
                    ))
                    .unwrap_or(&t);
                r.text([roman(t)]);
                first = false;
            }
            Part::Text(t) => para(&mut r, [roman(t)]),
            Part::Table(t) => {
                if !in_keys {
                    section(&mut r, "KEYS");
                    in_keys = true;
                }
                r.control("SS", [format!("[{t}]").as_str()]);
            }
            Part::Keys(keys, text) => {
                for (i, (k, v)) in keys.iter().enumerate() {
                    r.control(if i == 0 { "TP" } else { "TQ" }, []);
                    r.text([bold(k.as_str()), roman(format!(" = {v}"))]);
                }
                r.text([roman(text)]);
            }
        }
    }
    section(&mut r, "EXAMPLE");
    r.text([roman(
        "A certificate also valid for a name and an address clients use, a second client, \
         and Docker on one address only:",
    )]);
    literal(
        &mut r,
        "[server]\ndns_names = [\"docker.example.net\"]\nip_addresses = [\"192.0.2.10\"]\n\n\
         [clients]\nnames = [\"admin\", \"ci\"]\n\n[docker]\nlisten = [\"192.0.2.10:2376\"]",
    );
    section(&mut r, "SEE ALSO");
    r.text([bold(NAME), roman("(8)")]);
    title(&page, "5", "File Formats") + &r.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages as committed under tests/fixtures/man, so a change to the CLI, the config
    /// or the prose shows in review as a change of the manual (UPDATE_GOLDEN=1 rewrites them).
    #[test]
    fn pages_match_golden_files() {
        for page in pages() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/man")
                .join(&page.file_name);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &page.text).unwrap();
            }
            let expected = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
            assert_eq!(page.text, expected, "{} differs", path.display());
        }
    }

    #[test]
    fn every_config_key_is_described_and_parses_as_documented() {
        let parts = config_parts(config::EXAMPLE);
        let mut keys = 0;
        for p in &parts {
            if let Part::Keys(k, text) = p {
                assert!(
                    !text.is_empty(),
                    "config.example.toml: no comment above {k:?}"
                );
                keys += k.len();
            }
        }
        // Every key of the example is in the page, each once.
        let in_file = config::EXAMPLE
            .lines()
            .filter(|l| key_line(l).is_some())
            .count();
        assert_eq!(keys, in_file);
        assert!(keys > 20, "{parts:?}");
    }

    #[test]
    fn parts_group_keys_under_the_comment_above_them() {
        let parts = config_parts(
            "# Intro.\n\n[t]\n# About a and b.\na = 1\nb = 2\n# About c.\nc = \"x\"\n",
        );
        assert_eq!(
            parts,
            [
                Part::Text("Intro.".into()),
                Part::Table("t".into()),
                Part::Keys(
                    vec![("a".into(), "1".into()), ("b".into(), "2".into())],
                    "About a and b.".into()
                ),
                Part::Keys(vec![("c".into(), "\"x\"".into())], "About c.".into()),
            ]
        );
    }

    #[test]
    fn exit_status_is_the_one_help_states() {
        let help = cli().get_after_help().unwrap().to_string();
        let codes: Vec<String> = EXIT_STATUS
            .iter()
            .map(|(c, short, _)| format!("{c} {short}"))
            .collect();
        assert_eq!(help, format!("Exit codes: {}.", codes.join(", ")));
    }

    #[test]
    fn every_command_and_option_is_in_the_page() {
        let page = main_page();
        for word in [
            "apply",
            "status",
            "renew",
            "client add",
            "client bundle",
            "client env",
            "check",
            "deconfigure",
            "run",
            "\\-\\-dry\\-run",
            "\\-\\-pki\\-only",
            "\\-\\-format",
        ] {
            assert!(page.contains(word), "{word} missing");
        }
        assert!(!page.contains("generate\\-assets") && !page.contains("guard \\-"));
        // No page it does not ship: only docker-tls-manager.toml(5) of ours.
        assert!(!page.contains("docker\\-tls\\-manager\\-apply"));
    }
}
