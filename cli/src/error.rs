//! How a failure maps to the exit code (and the `kind` of the JSON error line).

use msim::ClientError;

/// A problem with the invocation (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Ctrl-C arrived before a command that cannot stop half-way had finished.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The documented exit codes (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: connection, I/O, protocol, relay.
    Error,
    /// 2: bad arguments, missing credentials, unreadable config file.
    Usage,
    /// 3: wrong login or password, throttled.
    Auth,
    /// 4: refused or rejected by the server or the peer.
    Refused,
    /// 130 (128 + SIGINT): Ctrl-C.
    Interrupted,
}

impl Exit {
    /// What `error` means for the caller.
    pub fn of(error: &anyhow::Error) -> Exit {
        if error.downcast_ref::<UsageError>().is_some() {
            return Exit::Usage;
        }
        if error.downcast_ref::<Interrupted>().is_some() {
            return Exit::Interrupted;
        }
        if let Some(e) = error.downcast_ref::<ClientError>() {
            if e.is_auth_failure() {
                return Exit::Auth;
            }
            if e.is_refusal() {
                return Exit::Refused;
            }
        }
        Exit::Error
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Auth => 3,
            Exit::Refused => 4,
            Exit::Interrupted => 130,
        }
    }

    /// The `kind` of the `--json` error line.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Error => "error",
            Exit::Usage => "usage",
            Exit::Auth => "auth",
            Exit::Refused => "refused",
            Exit::Interrupted => "interrupted",
        }
    }
}

/// Whether `error` means the connection is gone (worth reconnecting), rather than a refusal,
/// a protocol problem or a local failure.
pub fn is_connection_loss(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ClientError>(),
        Some(ClientError::Closed | ClientError::Io(_) | ClientError::Timeout)
    ) || error.downcast_ref::<std::io::Error>().is_some()
}
