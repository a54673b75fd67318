//! Storage errors.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process serves from this data directory (it holds `relay.lock`).
    #[error(
        "the relay data directory {0} is in use by another running relay (it holds relay.lock); \
         one relay (or msim-chat's embedded relay) per data directory"
    )]
    InUse(String),
    /// The id is not `[A-Za-z0-9-]{1,64}`.
    #[error("invalid blob id")]
    InvalidId,
    /// No such blob: never created, or removed so long ago that its tombstone was swept.
    #[error("no such blob")]
    NotFound,
    /// A blob with this id already exists.
    #[error("blob already exists")]
    AlreadyExists,
    /// The upload is already complete.
    #[error("upload already complete")]
    AlreadyComplete,
    /// Another writer is appending to this blob right now.
    #[error("another upload to this blob is in progress")]
    Busy,
    /// The store's total capacity would be exceeded.
    #[error("relay storage capacity exceeded")]
    CapacityExceeded,
    /// The file system's free space would drop below the watermark.
    #[error("relay disk nearly full")]
    LowDisk,
    /// The sender's quota would be exceeded.
    #[error("sender quota exceeded")]
    QuotaExceeded,
    /// More data than the declared size.
    #[error("data exceeds the declared size")]
    TooLarge,
    /// `finish` before all declared bytes arrived.
    #[error("upload incomplete: {received} of {size} bytes")]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// Declared size.
        size: u64,
    },
    /// The uploaded data does not match the declared SHA-256; the blob was discarded.
    #[error("SHA-256 mismatch: declared {expected}, received {actual}")]
    ShaMismatch {
        /// Declared digest.
        expected: String,
        /// Digest of the received data.
        actual: String,
    },
    /// The upload was cancelled.
    #[error("transfer cancelled")]
    Cancelled,
    /// The blob expired or the upload was abandoned and swept.
    #[error("transfer expired or abandoned")]
    Expired,
    /// The transfer existed and was removed (a tombstone remembers why): it will not come
    /// back, and its id is never used again.
    #[error("{0}")]
    Gone(GoneReason),
    /// The download limit for this blob is reached.
    #[error("download limit reached")]
    DownloadLimit,
    /// File system error.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Index database error.
    #[error("storage index error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Why a transfer that existed was removed (kept in a tombstone for a while).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// Cancelled with `DELETE`.
    Cancelled,
    /// Its TTL passed, or its partial upload was abandoned; swept.
    Expired,
    /// The upload did not match the declared SHA-256; discarded.
    Discarded,
    /// Removed after the last download its token allowed (`max-downloads`) completed.
    Downloaded,
}

impl GoneReason {
    /// Short label (`cancelled`, `expired`, `discarded`, `downloaded`).
    pub fn as_str(self) -> &'static str {
        match self {
            GoneReason::Cancelled => "cancelled",
            GoneReason::Expired => "expired",
            GoneReason::Discarded => "discarded",
            GoneReason::Downloaded => "downloaded",
        }
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            GoneReason::Cancelled => 1,
            GoneReason::Expired => 2,
            GoneReason::Discarded => 3,
            GoneReason::Downloaded => 4,
        }
    }

    pub(crate) fn from_code(code: i64) -> GoneReason {
        match code {
            1 => GoneReason::Cancelled,
            3 => GoneReason::Discarded,
            4 => GoneReason::Downloaded,
            _ => GoneReason::Expired,
        }
    }
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoneReason::Cancelled => "transfer cancelled: it was deleted and will not come back",
            GoneReason::Expired => {
                "transfer expired: its TTL passed or its upload was abandoned, and it was removed"
            }
            GoneReason::Discarded => {
                "transfer discarded: the upload failed its SHA-256 check and was removed"
            }
            GoneReason::Downloaded => {
                "transfer already downloaded: its download limit was reached and it was removed"
            }
        })
    }
}
