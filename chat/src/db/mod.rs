//! The storage boundary. Every SQL statement of msim-chat lives in this module; the protocol
//! code only sees [`Db`]'s methods, the row types ([`rows`]) and the [`WriteOp`] / [`Outcome`]
//! pair that the group-commit writer ([`commit`]) applies in batches.
//!
//! Layout: [`open`] (files, pragmas, checkpoints), [`rows`] (row models), [`reads`], [`ops`]
//! (the writes), [`batch`] (one transaction per batch) over [`apply`] (one write of the
//! general path) and one file per write family (`messages`, `contacts`, `users`, `files`,
//! [`privacy`], `retention`, `passwords`).

mod apply;
mod batch;
pub(crate) mod commit;
mod contacts;
mod files;
mod messages;
mod open;
mod ops;
mod passwords;
pub(crate) mod privacy;
mod reads;
mod retention;
mod rows;
pub(crate) mod space;
mod users;

pub use open::create_data_dir;
pub(crate) use ops::{Outcome, WriteOp};
pub(crate) use privacy::{OfferLimits, PrivacyOp, PrivacyOutcome};
pub(crate) use retention::Purged;
pub(crate) use rows::{
    ContactRow, Marks, Notice, Offer, OfferState, Profile, Receipt, StoredMessage,
};

use sqlx::SqlitePool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQL error.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// Migration error.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// File system error (creating or restricting the database files).
    #[error("database file: {0}")]
    Io(std::io::Error),
    /// The writer task has stopped (shutdown).
    #[error("database writer stopped")]
    WriterGone,
    /// Refused: the data directory is below its free-space watermark.
    #[error("data directory below its free-space watermark")]
    StorageFull,
}

/// The database handle.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
    writes: SqlitePool,
    /// Logins known to exist (users are never deleted), so message batches rarely query them.
    known: Arc<Mutex<HashSet<String>>>,
    /// WAL size in frames at the last checkpoint.
    wal_frames: Arc<std::sync::atomic::AtomicU64>,
    /// The last message sequence number handed out. The writer assigns `messages.seq` itself,
    /// in commit order, so a seq read after a commit bounds every message committed before it.
    message_seq: Arc<std::sync::atomic::AtomicI64>,
    /// Most pending messages per recipient (0 = unlimited).
    pending_cap: i64,
    /// Upper bounds of recipients' pending messages, for the cap.
    pending_bounds: retention::PendingBounds,
}
