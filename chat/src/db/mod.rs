//! The storage boundary. Every SQL statement of msim-chat lives in this module; the protocol
//! code only sees `Db`'s methods, the row types (`rows`, `notices`) and the `WriteOp` /
//! `Outcome` pair that the group-commit writer (`commit`) applies in batches.
//!
//! # Two backends, one set of statements
//!
//! `Db` holds either an embedded SQLite database (`sqlite`, the default: `<data-dir>/msim.db`)
//! or a PostgreSQL database shared by any number of msim-chat nodes (`postgres`, chosen with
//! `--database postgres://…`). The statements are shared text: `$1`-style parameters (SQLite
//! reads `$N` as the N-th argument too), `BIGINT`-compatible integers, no `rowid`,
//! `last_insert_rowid()` or `PRAGMA`; the [`read!`] and [`on!`] macros run the same code
//! against either backend's connection type. Only what differs lives per backend: opening
//! (pragmas, pools, WAL checkpoints; `synchronous_commit`), the migrations, how a batch
//! transaction begins and where message sequence numbers come from, and SQLite's one-trip
//! batch.
//!
//! # What a backend must guarantee
//!
//! The protocol code relies on these, on either backend:
//!
//! 1. **Durable before answered.** `Db::apply_batch` returns only once its transaction is
//!    committed and on stable storage; the writer answers its waiters after that, so
//!    `MESSAGE-SENT`, `FILE-PENDING` … always mean "stored". SQLite: WAL with
//!    `synchronous=FULL`. PostgreSQL: `synchronous_commit=on`, set on every connection (the
//!    commit returns once the WAL is flushed on the server, and on synchronous standbys if the
//!    operator configured any).
//! 2. **Commit order is sequence order.** `messages.seq`, `receipts.seq`, `notices.seq` and
//!    `offers.seq` grow in commit order: everything committed before a `Db::marks` read has
//!    a sequence number at or below its mark, everything committed later one above. Offline
//!    catch-up at login (PROTOCOL.md §5.4) reads the backlog up to the marks and takes live
//!    pushes above them, so an item is neither lost nor shown twice.
//! 3. **No gap filled late.** A lower sequence number never becomes visible after a higher
//!    one that a reader already used as its high-water mark.
//!
//!    SQLite gets 2 and 3 from its single writer connection: one transaction at a time,
//!    sequence numbers handed out inside it (`messages.seq` by `Db` from an in-memory counter,
//!    the others by the table's `AUTOINCREMENT`). PostgreSQL has one writer per node and
//!    several nodes: every batch transaction first takes one transaction-level advisory lock
//!    ([`postgres::BATCH_LOCK`]), so batches of all nodes run one at a time, and allocates its
//!    numbers inside (messages: a block reserved from the `message_seq` sequence; the others:
//!    identity columns). The lock is released only after the commit is durable and visible,
//!    so the next batch's numbers are higher and become visible later. `Db::marks` reads the
//!    four maxima in one statement (one snapshot).
//! 4. **The group commit contract.** One transaction per batch, answers in op order. Ops
//!    refused up front (below the free-space watermark: `StorageFull` for
//!    `WriteOp::grows_storage`; a full recipient queue: `Outcome::QueueFull`) fail alone.
//!    A constraint violation (unique, foreign key, not null, check) fails only its own op —
//!    each op, and each multi-row statement of messages, runs in a savepoint — or, for runs of
//!    messages written with one multi-row statement, the messages of that statement. Any
//!    other error (I/O, full disk, a lost connection, a failed `COMMIT`) fails the whole
//!    batch, and the write connection is replaced.
//!
//! Sequence numbers only order items; they are not contiguous (a refused message leaves a
//! hole). On SQLite they may be handed out again after a restart (retention deletes old rows;
//! they only order items for the sessions of one run); PostgreSQL's sequence never goes back.
//!
//! # Layout
//!
//! The boundary: this file (`Db`, `DbError`, the backend dispatch), `rows` (row models),
//! `notices` (stored results as data), `ops` (the writes and their outcomes), `commit` (the
//! writer task), `space` (the free-space watermark). Shared statements: `reads`, `batch`
//! (one transaction per batch) over `apply` (one write of the general path) and one file per
//! write family (`messages`, `contacts`, `users`, `files`, `privacy`, `retention`,
//! `passwords`). Per backend: `sqlite` and `postgres`.

/// Runs `$body` with `$pool` bound to the readers' pool of `$db`, once per backend (the same
/// statement text; each arm is compiled for its backend's types).
macro_rules! read {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.backend {
            $crate::db::Backend::Sqlite(b) => {
                let $pool = &b.pool;
                $body
            }
            $crate::db::Backend::Postgres(b) => {
                let $pool = &b.pool;
                $body
            }
        }
    };
}

/// Like [`read!`], with the writer's pool (between batches, in the writer task).
macro_rules! writes {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.backend {
            $crate::db::Backend::Sqlite(b) => {
                let $pool = &b.writes;
                $body
            }
            $crate::db::Backend::Postgres(b) => {
                let $pool = &b.writes;
                $body
            }
        }
    };
}

/// Runs `$body` with `$conn` bound to the connection of the writer's transaction `$tx` (a
/// `&mut Tx`), once per backend.
macro_rules! on {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(c) => {
                let $conn = &mut **c;
                $body
            }
            $crate::db::Tx::Postgres(c) => {
                let $conn = &mut **c;
                $body
            }
        }
    };
}

mod apply;
mod batch;
pub(crate) mod commit;
mod contacts;
pub mod copy;
mod federation;
pub(crate) mod federation_files;
pub(crate) mod federation_subs;
mod feed;
mod files;
mod messages;
pub(crate) mod notices;
mod ops;
mod passwords;
pub(crate) mod postgres;
pub(crate) mod privacy;
mod reads;
mod retention;
mod rows;
pub(crate) mod space;
pub(crate) mod sqlite;
#[cfg(test)]
mod store_tests;
mod users;

pub(crate) use federation::{QueueBound, QueueBounds, QueueDone, QueueWrite};
pub(crate) use notices::{Notice, NoticeBody};
pub(crate) use ops::{Outcome, WriteOp};
pub(crate) use privacy::{OfferLimits, PrivacyOp, PrivacyOutcome};
pub(crate) use retention::Purged;
pub(crate) use rows::{
    Backlog, ContactRow, Marks, Offer, OfferState, Profile, Receipt, StoredMessage,
};
pub use sqlite::create_data_dir;

/// `url` with its password replaced by `***`, for output and logs.
pub fn redact_database_url(url: &str) -> String {
    postgres::redact(url)
}

use sqlx::{PgConnection, SqliteConnection};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The outcome each op of a batch in doubt would have had (`None`: failed or unknown), in
/// the order of the batch's ops.
#[derive(Debug, Clone, Default)]
pub struct InDoubtOutcomes(pub(crate) Vec<Option<Outcome>>);

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
    /// A batch's `COMMIT` failed and whether it took effect could not be learnt in time
    /// (the database stayed unreachable): its writes may or may not be stored. With each op's
    /// outcome had it committed (the writer hands the items to the cluster's reader, which
    /// pushes them here if they turn out stored).
    #[error("database: commit outcome unknown: {0}")]
    InDoubt(String, InDoubtOutcomes),
    /// Another process (a running server, a `db copy`) has this SQLite data directory open.
    #[error("the data directory {0} is in use by another msim-chat process (a running server or `db copy`); stop it first")]
    InUse(String),
    /// `--database` is neither empty nor a `postgres://` URL.
    #[error("unsupported database URL (expected postgres://… or postgresql://…): {0}")]
    BadUrl(String),
}

/// The database handle.
#[derive(Debug, Clone)]
pub struct Db {
    backend: Backend,
    /// Logins known to exist (users are never deleted), so message batches rarely query them.
    known: Arc<Mutex<HashSet<String>>>,
    /// Most pending messages per recipient (0 = unlimited).
    pending_cap: i64,
    /// Upper bounds of recipients' pending messages, for the cap.
    pending_bounds: retention::PendingBounds,
}

/// Which database holds the data.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// `<data-dir>/msim.db`.
    Sqlite(Arc<sqlite::Store>),
    /// A PostgreSQL database, possibly shared by several nodes.
    Postgres(Arc<postgres::Store>),
}

/// The connection of the writer's open transaction.
pub(crate) enum Tx<'a> {
    /// SQLite.
    Sqlite(&'a mut SqliteConnection),
    /// PostgreSQL.
    Postgres(&'a mut PgConnection),
}

impl Db {
    /// Opens the configured store: PostgreSQL when `database` is a `postgres://` URL, else
    /// SQLite in `data_dir`.
    pub async fn open_configured(data_dir: &Path, database: Option<&str>) -> Result<Db, DbError> {
        match database.map(str::trim).filter(|u| !u.is_empty()) {
            None => Db::open(data_dir).await,
            Some(url) if postgres::is_url(url) => Db::open_postgres(url).await,
            Some(url) => Err(DbError::BadUrl(postgres::redact(url))),
        }
    }

    /// [`Db::open_configured`] for an operator command that may run beside a live server
    /// (SQLite: without the data directory's lock, see [`Db::open_beside_server`]).
    pub async fn open_configured_beside_server(
        data_dir: &Path,
        database: Option<&str>,
    ) -> Result<Db, DbError> {
        match database.map(str::trim).filter(|u| !u.is_empty()) {
            None => Db::open_beside_server(data_dir).await,
            Some(_) => Db::open_configured(data_dir, database).await,
        }
    }

    fn with_backend(backend: Backend) -> Db {
        Db {
            backend,
            known: Arc::default(),
            pending_cap: 0,
            pending_bounds: Default::default(),
        }
    }

    /// Limits the pending messages one recipient may have (0 = unlimited); messages beyond
    /// it are answered [`Outcome::QueueFull`].
    pub(crate) fn with_pending_cap(mut self, cap: u64) -> Db {
        self.pending_cap = cap.min(i64::MAX as u64) as i64;
        self
    }

    /// Which backend this is: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Background maintenance the server runs periodically: a passive WAL checkpoint on
    /// SQLite, nothing on PostgreSQL (the server checkpoints itself).
    pub(crate) async fn checkpoint(&self) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite(s) => s.checkpoint().await,
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Closes the pools.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }
}

impl Db {
    /// Called by the writer between batches: keeps SQLite's WAL from growing without bound
    /// (see [`sqlite::WAL_RESTART_FRAMES`]); nothing to do on PostgreSQL.
    pub(crate) async fn restart_wal_if_large(&self) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite(s) => s.restart_wal_if_large().await,
            Backend::Postgres(_) => Ok(()),
        }
    }
}
