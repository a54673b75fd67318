//! The storage boundary. Every SQL statement of msim-chat lives in this module; the protocol
//! code only sees [`Db`]'s methods, the row types and the [`WriteOp`] / [`Outcome`] pair that the
//! group-commit writer ([`crate::commit`]) applies in batches. The SQL is portable (no
//! SQLite-only functions in queries) so a PostgreSQL backend can be added behind the same API.

mod passwords;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod privacy;
pub use privacy::{OfferLimits, PrivacyOp, PrivacyOutcome};
mod batch;
mod retention;
pub mod space;
pub use retention::Purged;

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

/// A stored message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Insertion order.
    pub seq: i64,
    /// UUIDv7.
    pub id: String,
    /// Sender login (local).
    pub sender: String,
    /// Recipient login (local).
    pub recipient: String,
    /// Micros since epoch.
    pub at: i64,
    /// Text.
    pub text: String,
}

/// A read receipt waiting for an offline sender.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Row id (deleted once delivered).
    pub seq: i64,
    /// Message id.
    pub message_id: String,
    /// Reader login.
    pub reader: String,
    /// When read (micros).
    pub at: i64,
}

/// A file result, or a message expiry, stored for a user (delivered at each login until it
/// expires).
#[derive(Debug, Clone)]
pub struct Notice {
    /// Sequence number (0 until stored).
    pub seq: i64,
    /// Recipient login.
    pub login: String,
    /// Transfer id (the message id for `MESSAGE-SEND-FAILED reason=expired`).
    pub transfer_id: String,
    /// The packet, one wire line.
    pub packet: String,
    /// Micros since epoch.
    pub expires_at: i64,
}

/// High-water marks of the stored streams at one instant (see [`crate::hub::Stream`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// `messages.seq`.
    pub messages: i64,
    /// `receipts.seq`.
    pub receipts: i64,
    /// `offers.rowid`.
    pub offers: i64,
    /// `notices.seq`.
    pub notices: i64,
}

/// A user's profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Display name ('' = none).
    pub name: String,
    /// Status note.
    pub note: String,
    /// Last seen (micros), if ever.
    pub last_seen: Option<i64>,
}

/// One contact list entry joined with the contact's profile when local.
#[derive(Debug, Clone)]
pub struct ContactRow {
    /// Full address.
    pub contact: String,
    /// Local login of the contact, if on this server.
    pub contact_local: Option<String>,
    /// Owner-chosen name (None = defaulted to the profile name).
    pub name: Option<String>,
    /// Group path.
    pub group: Option<String>,
    /// The contact's profile name (local users).
    pub profile_name: Option<String>,
    /// The contact's note (local users).
    pub note: Option<String>,
    /// The contact's last seen (micros).
    pub last_seen: Option<i64>,
}

/// A file offer.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Transfer id.
    pub id: String,
    /// Sender login.
    pub sender: String,
    /// Recipient login.
    pub recipient: String,
    /// Sanitised file name.
    pub filename: String,
    /// Declared size.
    pub size: i64,
    /// Optional lowercase hex SHA-256.
    pub sha256: Option<String>,
    /// Optional MIME type.
    pub mime: Option<String>,
    /// Created (micros).
    pub created_at: i64,
    /// Expires (micros).
    pub expires_at: i64,
    /// `pending`, `accepted`, `rejected`, `expired`, `failed`.
    pub state: String,
    /// Relay base URL once accepted.
    pub relay: Option<String>,
}

type OfferTuple = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    String,
    Option<String>,
);

fn offer_from(t: OfferTuple) -> Offer {
    Offer {
        id: t.0,
        sender: t.1,
        recipient: t.2,
        filename: t.3,
        size: t.4,
        sha256: t.5,
        mime: t.6,
        created_at: t.7,
        expires_at: t.8,
        state: t.9,
        relay: t.10,
    }
}

const OFFER_COLS: &str =
    "id, sender, recipient, filename, size, sha256, mime, created_at, expires_at, state, relay";

/// A write, applied by the group-commit writer inside a shared transaction.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Register a user.
    CreateUser {
        /// Canonical login.
        login: String,
        /// Sealed password.
        sealed: Vec<u8>,
        /// Now (micros).
        now: i64,
    },
    /// Store a message for a local recipient.
    InsertMessage(StoredMessage),
    /// Mark a message read by its recipient and queue a receipt for the sender.
    MarkRead {
        /// Message id.
        id: String,
        /// Reader login.
        reader: String,
        /// Now (micros).
        at: i64,
    },
    /// The recipient has the message; stop redelivering.
    Ack {
        /// Message id.
        id: String,
        /// Recipient login.
        recipient: String,
    },
    /// Receipts delivered live; drop them from the queue.
    DeleteReceipts(Vec<i64>),
    /// Persist last seen.
    SetLastSeen {
        /// Login.
        login: String,
        /// Micros.
        at: i64,
    },
    /// Add a contact.
    AddContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
        /// Local login when on this server (must exist).
        contact_local: Option<String>,
        /// Explicit name.
        name: Option<String>,
        /// Group.
        group: Option<String>,
        /// Limit.
        max: i64,
    },
    /// Change a contact; `Some(None)` clears the field.
    ChangeContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
        /// New name.
        name: Option<String>,
        /// New group (`Some(None)` removes it).
        group: Option<Option<String>>,
    },
    /// Delete a contact.
    DeleteContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
    },
    /// Update one's profile.
    UpdateProfile {
        /// Login.
        login: String,
        /// New name.
        name: Option<String>,
        /// New note.
        note: Option<String>,
    },
    /// The recipient answers an offer.
    AnswerOffer {
        /// Transfer id.
        id: String,
        /// Who answers.
        by: String,
        /// Accept (with this relay) or reject (`None`).
        relay: Option<String>,
        /// Now (micros).
        now: i64,
    },
    /// Store file results for delivery at login.
    AddNotices(Vec<Notice>),
    /// Mark every pending offer past its expiry as expired (and drop expired notices).
    ExpireOffers {
        /// Now (micros).
        now: i64,
    },
    /// Presence consent, visibility, blocks and offer quotas.
    Privacy(PrivacyOp),
    /// One bounded step of the retention job (see [`Purged`]).
    Purge {
        /// Pending messages sent before this (micros) expire.
        expire_before: i64,
        /// Delivered messages' receipt data and receipts older than this (micros) go.
        forget_before: i64,
        /// Most rows of each kind this step removes.
        limit: i64,
    },
}

impl WriteOp {
    /// Whether the write stores new data (refused below the free-space watermark; writes that
    /// change or remove rows still run, they are what frees space).
    pub fn grows_storage(&self) -> bool {
        matches!(
            self,
            WriteOp::CreateUser { .. }
                | WriteOp::InsertMessage(_)
                | WriteOp::MarkRead { .. }
                | WriteOp::AddContact { .. }
                | WriteOp::UpdateProfile { .. }
                | WriteOp::Privacy(PrivacyOp::CreateOffer { .. })
                | WriteOp::AddNotices(_)
        )
    }
}

/// The result of one [`WriteOp`].
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done, nothing to report.
    Done,
    /// Stored with this sequence number (message seq, offer rowid).
    Stored(i64),
    /// Notices stored, with their sequence numbers.
    Notices(Vec<i64>),
    /// The login already exists.
    Taken,
    /// Unknown local user (recipient, contact, …).
    UnknownUser,
    /// The message was marked read; the sender must be told.
    Read {
        /// Sender login.
        sender: String,
        /// Receipt row.
        receipt: i64,
        /// When it was read.
        at: i64,
    },
    /// Not a message addressed to the reader.
    UnknownMessage,
    /// Contact already in the list.
    Exists,
    /// Contact list full.
    TooMany,
    /// Contact not in the list.
    NotFound,
    /// Profile before the update.
    OldProfile(Profile),
    /// Offer answered (accepted or rejected).
    Answered(Offer),
    /// Offer does not exist.
    UnknownTransfer,
    /// Only the recipient may answer.
    NotRecipient,
    /// Already answered.
    AlreadyAnswered,
    /// Expired.
    OfferExpired(Offer),
    /// Offers expired by a sweep.
    Expired(Vec<Offer>),
    /// The result of a [`PrivacyOp`].
    Privacy(PrivacyOutcome),
    /// The recipient already has the most pending messages allowed.
    QueueFull,
    /// What a retention step removed.
    Purged(Purged),
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

/// Creates the data directory with mode 0700 when it does not exist (an existing directory is
/// left as the operator set it up).
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path` empty with mode 0600 if missing (an empty file is an empty SQLite database),
/// or restricts an existing one to 0600.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    drop(o.open(path)?);
    restrict(path)
}

/// Sets an existing file to mode 0600 (no-op when it does not exist).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// WAL size (frames, ~4 KiB each) beyond which the writer restarts the log.
pub const WAL_RESTART_FRAMES: u64 = 8192;

impl Db {
    /// Opens (creating if needed) `<dir>/msim.db` in WAL mode and runs the migrations. The
    /// database file is created (or tightened) to mode 0600 before SQLite opens it; SQLite
    /// gives its `-wal` and `-shm` files the database file's mode.
    pub async fn open(dir: &Path) -> Result<Db, DbError> {
        let file = dir.join("msim.db");
        private_file(&file).map_err(DbError::Io)?;
        for extra in ["msim.db-wal", "msim.db-shm"] {
            restrict(&dir.join(extra)).map_err(DbError::Io)?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("msim.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Commits never checkpoint (a checkpoint writes and syncs the database file, tens
            // of milliseconds that every waiting MESSAGE-SENT would pay); the server runs
            // [`Db::checkpoint`] from a background task instead.
            .pragma("wal_autocheckpoint", "0")
            .busy_timeout(Duration::from_secs(10));
        // Page cache per connection (negative: KiB). Readers serve short indexed lookups; the
        // writer's cache keeps the indexes it appends to warm.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().pragma("cache_size", "-2048"))
            .await?;
        sqlx::migrate!("src/db/migrations").run(&pool).await?;
        // One connection that only the group-commit writer uses: its page cache stays warm
        // (another connection's commit would invalidate it).
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.pragma("cache_size", "-8192"))
            .await?;
        // Retention deletes old rows, so after a restart seqs may be handed out again: harmless,
        // they only order items for the sessions of one run (login marks, PROTOCOL.md §5.4).
        let (last,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM messages")
            .fetch_one(&pool)
            .await?;
        Ok(Db {
            pool,
            writes,
            known: Arc::default(),
            wal_frames: Arc::default(),
            message_seq: Arc::new(std::sync::atomic::AtomicI64::new(last.unwrap_or(0))),
            pending_cap: 0,
            pending_bounds: Default::default(),
        })
    }

    /// Limits the pending messages one recipient may have (0 = unlimited); messages beyond
    /// it are answered [`Outcome::QueueFull`].
    pub fn with_pending_cap(mut self, cap: u64) -> Db {
        self.pending_cap = cap.min(i64::MAX as u64) as i64;
        self
    }

    /// Copies committed WAL frames into the database file without blocking the writer
    /// (`PRAGMA wal_checkpoint(PASSIVE)`); the WAL is then reused from its start.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        self.wal_frames
            .store(log.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Under sustained writes a passive checkpoint never catches up to the end of the log, so
    /// the WAL would grow without bound. Called by the writer between batches: when the log
    /// passed [`WAL_RESTART_FRAMES`], checkpoints the (few) frames the background checkpoint
    /// has not copied yet and restarts the log from its beginning.
    pub async fn restart_wal_if_large(&self) -> Result<(), DbError> {
        use std::sync::atomic::Ordering;
        if self.wal_frames.load(Ordering::Relaxed) < WAL_RESTART_FRAMES {
            return Ok(());
        }
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&self.writes)
            .await?;
        tracing::debug!(frames = log, "WAL restarted");
        self.wal_frames.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// `PRAGMA journal_mode` and `PRAGMA synchronous` (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA) of
    /// the connection that commits, and of the pool the readers use: lets tests check the
    /// durability docs/OPERATING.md promises.
    pub async fn durability(&self) -> Result<[(String, i64); 2], DbError> {
        let mut out: [(String, i64); 2] = Default::default();
        for (slot, pool) in out.iter_mut().zip([&self.writes, &self.pool]) {
            let mut conn = pool.acquire().await?;
            let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await?;
            let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await?;
            *slot = (mode, sync);
        }
        Ok(out)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }

    /// The sealed password of a login.
    pub async fn password(&self, login: &str) -> Result<Option<Vec<u8>>, DbError> {
        let r: Option<(Vec<u8>,)> = sqlx::query_as("SELECT password FROM users WHERE login = ?")
            .bind(login)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| r.0))
    }

    /// Whether a local user exists.
    pub async fn user_exists(&self, login: &str) -> Result<bool, DbError> {
        let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM users WHERE login = ?")
            .bind(login)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    /// A user's profile.
    pub async fn profile(&self, login: &str) -> Result<Option<Profile>, DbError> {
        let r: Option<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT name, note, last_seen FROM users WHERE login = ?")
                .bind(login)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(|(name, note, last_seen)| Profile {
            name,
            note,
            last_seen,
        }))
    }

    /// The high-water marks of the stored streams, read in one transaction. Every item
    /// committed so far has a sequence number at or below its mark, every later one above.
    pub async fn marks(&self) -> Result<Marks, DbError> {
        let r: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE((SELECT MAX(seq) FROM messages), 0), \
             COALESCE((SELECT MAX(seq) FROM receipts), 0), \
             COALESCE((SELECT MAX(rowid) FROM offers), 0), \
             COALESCE((SELECT MAX(seq) FROM notices), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Marks {
            messages: r.0,
            receipts: r.1,
            offers: r.2,
            notices: r.3,
        })
    }

    /// Unexpired notices for `login` with `seq <= max_seq`, oldest first.
    pub async fn pending_notices(
        &self,
        login: &str,
        now: i64,
        max_seq: i64,
    ) -> Result<Vec<Notice>, DbError> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT seq, transfer_id, packet, expires_at FROM notices \
             WHERE login = ? AND seq <= ? AND expires_at > ? ORDER BY seq LIMIT 10000",
        )
        .bind(login)
        .bind(max_seq)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, transfer_id, packet, expires_at)| Notice {
                seq,
                login: login.to_owned(),
                transfer_id,
                packet,
                expires_at,
            })
            .collect())
    }

    /// Pending (unacknowledged, unread) messages for `login` with `after_seq < seq <= max_seq`,
    /// oldest first.
    pub async fn pending_messages(
        &self,
        login: &str,
        after_seq: i64,
        max_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let rows: Vec<(i64, String, String, String, i64, String)> = sqlx::query_as(
            "SELECT seq, id, sender, recipient, at, body FROM messages \
             WHERE recipient = ? AND pending = 1 AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        )
        .bind(login)
        .bind(after_seq)
        .bind(max_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, id, sender, recipient, at, text)| StoredMessage {
                seq,
                id,
                sender,
                recipient,
                at,
                text,
            })
            .collect())
    }

    /// Read receipts waiting for `sender` with `seq <= max_seq`, oldest first.
    pub async fn pending_receipts(
        &self,
        sender: &str,
        max_seq: i64,
    ) -> Result<Vec<Receipt>, DbError> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT seq, message_id, reader, at FROM receipts WHERE sender = ? AND seq <= ? \
             ORDER BY seq LIMIT 10000",
        )
        .bind(sender)
        .bind(max_seq)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, message_id, reader, at)| Receipt {
                seq,
                message_id,
                reader,
                at,
            })
            .collect())
    }

    /// Unanswered, unexpired offers for `recipient` with `rowid <= max_seq`, oldest first.
    pub async fn pending_offers(
        &self,
        recipient: &str,
        now: i64,
        max_seq: i64,
    ) -> Result<Vec<Offer>, DbError> {
        let rows: Vec<OfferTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OFFER_COLS} FROM offers WHERE recipient = ? AND state = 'pending' \
             AND expires_at > ? AND rowid <= ? ORDER BY rowid LIMIT 10000"
        )))
        .bind(recipient)
        .bind(now)
        .bind(max_seq)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(offer_from).collect())
    }

    /// The contact list of `owner`.
    pub async fn contacts(&self, owner: &str) -> Result<Vec<ContactRow>, DbError> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.contact, c.contact_local, c.name, c.grp, u.name, u.note, u.last_seen \
             FROM contacts c LEFT JOIN users u ON u.login = c.contact_local \
             WHERE c.owner = ? ORDER BY c.contact",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ContactRow {
                contact: r.0,
                contact_local: r.1,
                name: r.2,
                group: r.3,
                profile_name: r.4,
                note: r.5,
                last_seen: r.6,
            })
            .collect())
    }

    /// Owners who have local user `login` as a contact, with whether their name is defaulted.
    pub async fn watchers(&self, login: &str) -> Result<Vec<(String, bool)>, DbError> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT owner, name FROM contacts WHERE contact_local = ?")
                .bind(login)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(o, n)| (o, n.is_none())).collect())
    }
}

async fn exists(tx: &mut Transaction<'_, Sqlite>, login: &str) -> Result<bool, DbError> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM users WHERE login = ?")
        .bind(login)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(r.is_some())
}

async fn apply(tx: &mut Transaction<'_, Sqlite>, op: WriteOp) -> Result<Outcome, DbError> {
    match op {
        WriteOp::CreateUser { login, sealed, now } => {
            if exists(tx, &login).await? {
                return Ok(Outcome::Taken);
            }
            sqlx::query("INSERT INTO users (login, password, created_at) VALUES (?, ?, ?)")
                .bind(&login)
                .bind(sealed)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::Done)
        }
        WriteOp::InsertMessage(m) => {
            if !exists(tx, &m.recipient).await? {
                return Ok(Outcome::UnknownUser);
            }
            sqlx::query(
                "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(m.seq)
            .bind(&m.id)
            .bind(&m.sender)
            .bind(&m.recipient)
            .bind(m.at)
            .bind(&m.text)
            .execute(&mut **tx)
            .await?;
            Ok(Outcome::Done)
        }
        WriteOp::MarkRead { id, reader, at } => {
            let r: Option<(String, Option<i64>)> = sqlx::query_as(
                "SELECT sender, read_at FROM messages WHERE id = ? AND recipient = ?",
            )
            .bind(&id)
            .bind(&reader)
            .fetch_optional(&mut **tx)
            .await?;
            let Some((sender, read_at)) = r else {
                return Ok(Outcome::UnknownMessage);
            };
            let at = read_at.unwrap_or(at);
            sqlx::query("UPDATE messages SET pending = 0, body = '', read_at = ? WHERE id = ?")
                .bind(at)
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            let receipt: (i64,) = sqlx::query_as(
                "INSERT INTO receipts (sender, message_id, reader, at) VALUES (?, ?, ?, ?) RETURNING seq",
            )
            .bind(&sender)
            .bind(&id)
            .bind(&reader)
            .bind(at)
            .fetch_one(&mut **tx)
            .await?;
            Ok(Outcome::Read {
                sender,
                receipt: receipt.0,
                at,
            })
        }
        WriteOp::Ack { id, recipient } => {
            sqlx::query(
                "UPDATE messages SET pending = 0, body = '' WHERE id = ? AND recipient = ?",
            )
            .bind(&id)
            .bind(&recipient)
            .execute(&mut **tx)
            .await?;
            Ok(Outcome::Done)
        }
        WriteOp::DeleteReceipts(seqs) => {
            for s in seqs {
                sqlx::query("DELETE FROM receipts WHERE seq = ?")
                    .bind(s)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(Outcome::Done)
        }
        WriteOp::SetLastSeen { login, at } => {
            sqlx::query("UPDATE users SET last_seen = ? WHERE login = ?")
                .bind(at)
                .bind(&login)
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::Done)
        }
        WriteOp::AddContact {
            owner,
            contact,
            contact_local,
            name,
            group,
            max,
        } => {
            if let Some(l) = &contact_local {
                if !exists(tx, l).await? {
                    return Ok(Outcome::UnknownUser);
                }
            }
            let r: Option<(i64,)> =
                sqlx::query_as("SELECT 1 FROM contacts WHERE owner = ? AND contact = ?")
                    .bind(&owner)
                    .bind(&contact)
                    .fetch_optional(&mut **tx)
                    .await?;
            if r.is_some() {
                return Ok(Outcome::Exists);
            }
            let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM contacts WHERE owner = ?")
                .bind(&owner)
                .fetch_one(&mut **tx)
                .await?;
            if n.0 >= max {
                return Ok(Outcome::TooMany);
            }
            sqlx::query(
                "INSERT INTO contacts (owner, contact, contact_local, name, grp) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&owner)
            .bind(&contact)
            .bind(&contact_local)
            .bind(&name)
            .bind(&group)
            .execute(&mut **tx)
            .await?;
            Ok(Outcome::Done)
        }
        WriteOp::ChangeContact {
            owner,
            contact,
            name,
            group,
        } => {
            let r: Option<(i64,)> =
                sqlx::query_as("SELECT 1 FROM contacts WHERE owner = ? AND contact = ?")
                    .bind(&owner)
                    .bind(&contact)
                    .fetch_optional(&mut **tx)
                    .await?;
            if r.is_none() {
                return Ok(Outcome::NotFound);
            }
            if let Some(name) = name {
                sqlx::query("UPDATE contacts SET name = ? WHERE owner = ? AND contact = ?")
                    .bind(name)
                    .bind(&owner)
                    .bind(&contact)
                    .execute(&mut **tx)
                    .await?;
            }
            if let Some(group) = group {
                sqlx::query("UPDATE contacts SET grp = ? WHERE owner = ? AND contact = ?")
                    .bind(group)
                    .bind(&owner)
                    .bind(&contact)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(Outcome::Done)
        }
        WriteOp::DeleteContact { owner, contact } => {
            let r = sqlx::query("DELETE FROM contacts WHERE owner = ? AND contact = ?")
                .bind(&owner)
                .bind(&contact)
                .execute(&mut **tx)
                .await?;
            Ok(if r.rows_affected() == 0 {
                Outcome::NotFound
            } else {
                Outcome::Done
            })
        }
        WriteOp::UpdateProfile { login, name, note } => {
            let r: Option<(String, String, Option<i64>)> =
                sqlx::query_as("SELECT name, note, last_seen FROM users WHERE login = ?")
                    .bind(&login)
                    .fetch_optional(&mut **tx)
                    .await?;
            let Some((old_name, old_note, last_seen)) = r else {
                return Ok(Outcome::UnknownUser);
            };
            sqlx::query("UPDATE users SET name = ?, note = ? WHERE login = ?")
                .bind(name.as_deref().unwrap_or(&old_name))
                .bind(note.as_deref().unwrap_or(&old_note))
                .bind(&login)
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::OldProfile(Profile {
                name: old_name,
                note: old_note,
                last_seen,
            }))
        }
        WriteOp::AnswerOffer { id, by, relay, now } => {
            let r: Option<OfferTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {OFFER_COLS} FROM offers WHERE id = ?"
            )))
            .bind(&id)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(mut offer) = r.map(offer_from) else {
                return Ok(Outcome::UnknownTransfer);
            };
            if offer.recipient != by {
                return Ok(Outcome::NotRecipient);
            }
            if offer.state == "expired" || (offer.state == "pending" && offer.expires_at <= now) {
                return Ok(Outcome::OfferExpired(offer));
            }
            if offer.state != "pending" {
                return Ok(Outcome::AlreadyAnswered);
            }
            offer.state = if relay.is_some() {
                "accepted".into()
            } else {
                "rejected".into()
            };
            offer.relay = relay;
            sqlx::query("UPDATE offers SET state = ?, relay = ?, answered_at = ? WHERE id = ?")
                .bind(&offer.state)
                .bind(&offer.relay)
                .bind(now)
                .bind(&offer.id)
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::Answered(offer))
        }
        WriteOp::AddNotices(notices) => {
            let mut seqs = Vec::with_capacity(notices.len());
            for n in notices {
                let r = sqlx::query(
                    "INSERT INTO notices (login, transfer_id, packet, expires_at) VALUES (?, ?, ?, ?)",
                )
                .bind(&n.login)
                .bind(&n.transfer_id)
                .bind(&n.packet)
                .bind(n.expires_at)
                .execute(&mut **tx)
                .await?;
                seqs.push(r.last_insert_rowid());
            }
            Ok(Outcome::Notices(seqs))
        }
        WriteOp::Purge {
            expire_before,
            forget_before,
            limit,
        } => retention::purge(tx, expire_before, forget_before, limit)
            .await
            .map(Outcome::Purged),
        WriteOp::ExpireOffers { now } => {
            let rows: Vec<OfferTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {OFFER_COLS} FROM offers WHERE state IN ('pending', 'hidden') AND expires_at <= ? LIMIT 10000"
            )))
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
            for r in &rows {
                sqlx::query("UPDATE offers SET state = 'expired' WHERE id = ?")
                    .bind(&r.0)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("DELETE FROM notices WHERE expires_at <= ?")
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(Outcome::Expired(rows.into_iter().map(offer_from).collect()))
        }
        WriteOp::Privacy(op) => privacy::apply(tx, op).await,
    }
}
