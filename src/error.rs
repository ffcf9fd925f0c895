//! Errors a caller matches on: the exit code contract (0 ok, 1 failed, 2 bad usage or config).

/// Bad usage, arguments or configuration: exit code 2. The message says what, where and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Each exit code, its word in `--help` and its meaning: the man page's EXIT STATUS and the
/// `--help` summary (checked in `crate::manual`) come from here.
pub const EXIT_STATUS: [(i32, &str, &str); 3] = [
    (EXIT_OK, "ok", "Success (check: apply would succeed)."),
    (
        EXIT_FAILED,
        "failed",
        "Failed: the message says what, and whether the rollback restored Docker (check: apply \
         would fail; client bundle: refused, nothing written).",
    ),
    (
        EXIT_USAGE,
        "bad usage or configuration",
        "Bad usage, a bad configuration, or a host setting that must be changed first; the \
         message says which and where. systemd does not restart the service on this code \
         (RestartPreventExitStatus=2).",
    ),
];

/// The exit code for an error: 2 if a [`UsageError`] is anywhere in its chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some())
    {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}
