//! The client's error type.

use msim_shared::proto::{
    AnswerFailure, BlockFailure, ConnectFailure, ContactFailure, DoneFailure, FileRejection,
    HashFailure, PresenceFailure, ProfileFailure, ReadFailure, RegisterFailure, SendFailure,
};

/// Everything that can go wrong in the client library.
///
/// Refusals by the server keep the server's reason code (`reason.as_str()` is the wire code).
/// [`ClientError::is_auth_failure`] and [`ClientError::is_refusal`] classify errors for callers
/// that map them to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket or file I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection to the server is closed.
    #[error("connection to the server closed")]
    Closed,
    /// A download was paused on request ([`crate::transfer::download_pausable`]): its
    /// `.part` file holds every byte received, written and closed, and a later download of
    /// the same transfer to the same place continues it.
    #[error("download paused")]
    Paused,
    /// The server did not answer in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server sent something the client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `CONNECT-FAILED`.
    #[error("login failed: {}", describe_connect_failure(reason, *retry_after))]
    AuthFailed {
        /// The server's reason.
        reason: ConnectFailure,
        /// Seconds to wait before trying again (`throttled`).
        retry_after: Option<u64>,
    },
    /// `REGISTER-FAILED`.
    #[error("registration refused: {0}")]
    RegisterFailed(RegisterFailure),
    /// `MESSAGE-SEND-FAILED`.
    #[error("message not sent: {reason}")]
    SendFailed {
        /// The message id the server assigned.
        id: String,
        /// Why.
        reason: SendFailure,
    },
    /// `MESSAGE-READ-FAILED`.
    #[error("cannot mark {id} read: {reason}")]
    ReadFailed {
        /// The message id.
        id: String,
        /// Why.
        reason: ReadFailure,
    },
    /// `CONTACTS-ADD-FAILED`, `CONTACTS-CHANGE-FAILED`, `CONTACTS-DELETE-FAILED`.
    #[error("contact {id}: {reason}")]
    ContactFailed {
        /// The contact.
        id: String,
        /// Why.
        reason: ContactFailure,
    },
    /// `PROFILE-UPDATE-FAILED`.
    #[error("profile: {0}")]
    ProfileFailed(ProfileFailure),
    /// `SEND-FILE-PROXY-REJECTED`.
    #[error("file transfer rejected: {reason}")]
    FileRejected {
        /// The transfer.
        transfer_id: String,
        /// Why (`rejected` when the recipient said no).
        reason: FileRejection,
    },
    /// `SEND-FILE-PROXY-ANSWER-FAILED`.
    #[error("cannot answer transfer {transfer_id}: {reason}")]
    AnswerFailed {
        /// The transfer.
        transfer_id: String,
        /// Why.
        reason: AnswerFailure,
    },
    /// `SEND-FILE-PROXY-DONE-FAILED`.
    #[error("cannot mark transfer {transfer_id} as done: {reason}")]
    DoneFailed {
        /// The transfer.
        transfer_id: String,
        /// Why.
        reason: DoneFailure,
    },
    /// `SEND-FILE-PROXY-HASH-FAILED`.
    #[error("cannot declare the SHA-256 of transfer {transfer_id}: {reason}")]
    HashFailed {
        /// The transfer.
        transfer_id: String,
        /// Why.
        reason: HashFailure,
    },
    /// The sender of a file offered without a SHA-256 did not declare one in time
    /// (`SEND-FILE-PROXY-HASH`), so the download cannot be verified.
    #[error("the sender did not confirm the file's SHA-256 (unverified download)")]
    NoSenderHash,
    /// `PRESENCE-ANSWER-FAILED`, or `PRIVACY-FAILED` (without an `id`).
    #[error("presence {}: {reason}", id.as_deref().unwrap_or("settings"))]
    PresenceFailed {
        /// The watcher answered.
        id: Option<String>,
        /// Why.
        reason: PresenceFailure,
    },
    /// `BLOCK-FAILED`, `UNBLOCK-FAILED`.
    #[error("block {id}: {reason}")]
    BlockFailed {
        /// The user.
        id: String,
        /// Why.
        reason: BlockFailure,
    },
    /// `ERROR-RATE-LIMITED`.
    #[error("rate limited by the server; retry after {0} s")]
    RateLimited(u64),
    /// `ERROR-NOT-LOGGED-IN`.
    #[error("not logged in")]
    NotLoggedIn,
    /// Another `ERROR-…` packet answering a request.
    #[error("server error {verb}: {detail}")]
    Server {
        /// The error packet's verb.
        verb: String,
        /// What it said.
        detail: String,
    },
    /// The TLS handshake failed (server or relay). Not retried: a certificate that is not
    /// trusted stays untrusted.
    #[error("TLS with {host}: {message}")]
    Tls {
        /// The host name the certificate was checked against.
        host: String,
        /// One line: what went wrong.
        message: String,
        /// Whether the peer's certificate was refused (untrusted, expired, wrong name).
        certificate: bool,
    },
    /// The relay's HTTP connection failed.
    #[error("relay connection: {0}")]
    Http(String),
    /// The relay answered with an unexpected status.
    #[error("relay answered {status}: {message}")]
    RelayStatus {
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        message: String,
    },
    /// A URL or relay address could not be used.
    #[error("bad relay address: {0}")]
    BadUrl(String),
    /// The downloaded file does not match the announced SHA-256.
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The announced digest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The transfer moved a different number of bytes than announced.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The announced size.
        expected: u64,
        /// The size seen.
        actual: u64,
    },
}

fn describe_connect_failure(reason: &ConnectFailure, retry_after: Option<u64>) -> String {
    match (reason, retry_after) {
        (ConnectFailure::Invalid, _) => "wrong login or password".to_owned(),
        (ConnectFailure::Throttled, Some(secs)) => {
            format!("too many attempts, retry in {secs} s")
        }
        (reason, _) => reason.to_string(),
    }
}

impl ClientError {
    /// Whether the server refused the credentials (`CONNECT-FAILED`).
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            ClientError::AuthFailed { .. } | ClientError::NotLoggedIn
        )
    }

    /// Whether the server or the peer refused the operation (a `…-FAILED` / `…-REJECTED`
    /// answer), as opposed to a transport or local failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::RegisterFailed(_)
                | ClientError::SendFailed { .. }
                | ClientError::ReadFailed { .. }
                | ClientError::ContactFailed { .. }
                | ClientError::ProfileFailed(_)
                | ClientError::FileRejected { .. }
                | ClientError::AnswerFailed { .. }
                | ClientError::HashFailed { .. }
                | ClientError::DoneFailed { .. }
                | ClientError::PresenceFailed { .. }
                | ClientError::BlockFailed { .. }
                | ClientError::RateLimited(_)
        )
    }
}
