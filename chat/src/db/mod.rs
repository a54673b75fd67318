//! The storage boundary. Every SQL statement of msim-chat lives in this module; the protocol
//! code only sees `Db`'s methods, the row types (`rows`) and the `WriteOp` / `Outcome`
//! pair that the group-commit writer (`commit`) applies in batches.
//!
//! # What a backend must guarantee
//!
//! Only SQLite implements the store today. The SQL is *not* portable: `PRAGMA`s and WAL
//! checkpoints (`open`), `offers.rowid` as the offers' sequence (`reads`'s marks and
//! pending offers), `last_insert_rowid()` (`files`, `privacy`), `AUTOINCREMENT` (the
//! migrations), and the one-trip `BEGIN IMMEDIATE; …; COMMIT;` query (`batch`). A second
//! backend (PostgreSQL) must give the same guarantees, which the protocol code relies on:
//!
//! 1. **Durable before answered.** `Db::apply_batch` returns only once its transaction is
//!    committed and on stable storage (SQLite: WAL with `synchronous=FULL`); the writer answers
//!    its waiters after that, so `MESSAGE-SENT`, `FILE-PENDING` … always mean "stored".
//! 2. **Commit order is sequence order.** `messages.seq`, `receipts.seq`, `notices.seq` and
//!    the offers' sequence grow in commit order: everything committed before a
//!    `Db::marks` read has a sequence number at or below its mark, everything committed
//!    later one above. Offline catch-up at login (PROTOCOL.md §5.4) reads the backlog up to
//!    the marks and takes live pushes above them, so an item is neither lost nor shown twice.
//! 3. **No gap filled late.** A lower sequence number never becomes visible after a higher one
//!    that a reader already used as its high-water mark. SQLite gets 2 and 3 from its single
//!    writer connection: one transaction at a time, sequence numbers handed out inside it
//!    (`messages.seq` by `Db` itself, the others by the table). A backend with concurrent
//!    writers must serialise allocation with commit (e.g. keep the single writer); plain
//!    PostgreSQL sequences would break 3.
//! 4. **The group commit contract.** One transaction per batch, answers in op order. Ops
//!    refused up front (below the free-space watermark: `StorageFull` for
//!    `WriteOp::grows_storage`; a full recipient queue: `Outcome::QueueFull`) fail alone.
//!    A constraint violation (unique, foreign key, not null, check) fails only its own op —
//!    each non-hot op runs in a savepoint — or, for runs of messages written with one
//!    multi-row statement, the messages of that statement. Any other error (I/O, full disk,
//!    a failed `COMMIT`) fails the whole batch, and the write connection is replaced.
//!
//! Sequence numbers may be handed out again after a restart (retention deletes old rows):
//! they only order items for the sessions of one run.
//!
//! # Layout
//!
//! The boundary: this file (`Db`, `DbError`), `rows` (row models), `ops` (the
//! writes and their outcomes), `commit` (the writer task), `space` (the free-space
//! watermark). The SQLite backend: `open` (files, pragmas, checkpoints), `reads`,
//! `batch` (one transaction per batch) over `apply` (one write of the general path) and
//! one file per write family (`messages`, `contacts`, `users`, `files`, `privacy`,
//! `retention`, `passwords`).

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
