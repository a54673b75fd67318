//! Storage errors.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is not `[A-Za-z0-9-]{1,64}`.
    #[error("invalid blob id")]
    InvalidId,
    /// No such blob (never created, cancelled, swept or expired).
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
