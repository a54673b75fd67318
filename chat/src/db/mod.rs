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

/// A file result stored for a user (delivered at each login until it expires).
#[derive(Debug, Clone)]
pub struct Notice {
    /// Sequence number (0 until stored).
    pub seq: i64,
    /// Recipient login.
    pub login: String,
    /// Transfer id.
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
            .pragma("cache_size", "-16384")
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("src/db/migrations").run(&pool).await?;
        // One connection that only the group-commit writer uses: its page cache stays warm
        // (another connection's commit would invalidate it).
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        let (last,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM messages")
            .fetch_one(&pool)
            .await?;
        Ok(Db {
            pool,
            writes,
            known: Arc::default(),
            wal_frames: Arc::default(),
            message_seq: Arc::new(std::sync::atomic::AtomicI64::new(last.unwrap_or(0))),
        })
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

    /// Applies a batch of writes in one transaction and commits once. Runs of messages and
    /// acknowledgements (the hot path) are validated up front and written with one multi-row
    /// statement per chunk; every other op runs in its own savepoint, so a failing op does not
    /// fail the others. Returns one result per op, in order.
    pub async fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Outcome, DbError>>, DbError> {
        let r = self.apply_batch_inner(ops).await;
        if r.is_err() {
            // Users seen inside a transaction that did not commit may not exist.
            self.known_users().clear();
        }
        r
    }

    async fn apply_batch_inner(
        &self,
        mut ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Outcome, DbError>>, DbError> {
        if let Some(done) = self.apply_hot_batch(&mut ops).await {
            return Ok(done);
        }
        let n = ops.len();
        let mut out: Vec<Option<Result<Outcome, DbError>>> = Vec::with_capacity(n);
        out.resize_with(n, || None);
        let started = std::time::Instant::now();
        let mut tx = self.writes.begin().await?;
        let mut bulk = Bulk::default();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                WriteOp::InsertMessage(mut m) => {
                    m.seq = self.next_message_seq();
                    bulk.messages.push((i, m));
                }
                WriteOp::Ack { id, recipient } => bulk.acks.push((i, id, recipient)),
                op => {
                    self.flush_bulk(&mut tx, &mut bulk, &mut out).await?;
                    let created = match &op {
                        WriteOp::CreateUser { login, .. } => Some(login.clone()),
                        _ => None,
                    };
                    let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                    match apply(&mut sp, op).await {
                        Ok(o) => {
                            sp.commit().await?;
                            if let (Some(login), Outcome::Done) = (created, &o) {
                                self.known_users().insert(login);
                            }
                            out[i] = Some(Ok(o));
                        }
                        Err(e) => {
                            sp.rollback().await?;
                            out[i] = Some(Err(e));
                        }
                    }
                }
            }
        }
        self.flush_bulk(&mut tx, &mut bulk, &mut out).await?;
        let applied = started.elapsed();
        tx.commit().await?;
        tracing::debug!(
            ops = n,
            apply_us = applied.as_micros() as u64,
            commit_us = (started.elapsed() - applied).as_micros() as u64,
            "batch"
        );
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(Err(DbError::WriterGone)))
            .collect())
    }

    /// The common batch — only new messages to known users and acknowledgements, each kind
    /// fitting one statement — in a single round trip to SQLite's thread: `BEGIN IMMEDIATE`,
    /// the multi-row `INSERT`, the `UPDATE` of acknowledged messages and `COMMIT` as one
    /// multi-statement query (sqlx binds `?` parameters across its statements in order). The
    /// general path takes four round trips for the same work, each a wake-up of another thread;
    /// at moderate rates those hand-offs, not SQLite, were most of a batch's time. `None`: the
    /// batch is not of that kind, or the query failed (rolled back, nothing written); the
    /// caller then takes the general path, which reports errors per operation.
    async fn apply_hot_batch(&self, ops: &mut [WriteOp]) -> Option<Vec<Result<Outcome, DbError>>> {
        let (mut messages, mut acks) = (0usize, 0usize);
        {
            let known = self.known_users();
            for op in ops.iter() {
                match op {
                    WriteOp::InsertMessage(m) if known.contains(&m.recipient) => messages += 1,
                    WriteOp::Ack { .. } => acks += 1,
                    _ => return None,
                }
            }
        }
        if messages > ROW_CHUNK || acks > IN_CHUNK / 2 || messages + acks == 0 {
            return None;
        }
        let mut sql = String::from("BEGIN IMMEDIATE;");
        if messages > 0 {
            sql.push_str(&format!(
                "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES {};",
                placeholders(messages, 6)
            ));
        }
        if acks > 0 {
            sql.push_str(&format!(
                "UPDATE messages SET pending = 0 WHERE id IN ({}) \
                 AND (id || ' ' || recipient) IN ({});",
                placeholders(acks, 1),
                placeholders(acks, 1)
            ));
        }
        sql.push_str("COMMIT;");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for op in ops.iter_mut() {
            if let WriteOp::InsertMessage(m) = op {
                m.seq = self.next_message_seq();
                q = q
                    .bind(m.seq)
                    .bind(m.id.clone())
                    .bind(m.sender.clone())
                    .bind(m.recipient.clone())
                    .bind(m.at)
                    .bind(m.text.clone());
            }
        }
        let ack_pairs = ops.iter().filter_map(|op| match op {
            WriteOp::Ack { id, recipient } => Some((id, recipient)),
            _ => None,
        });
        let (ids, pairs): (Vec<_>, Vec<_>) = ack_pairs
            .map(|(id, recipient)| (id.clone(), format!("{id} {recipient}")))
            .unzip();
        for id in ids {
            q = q.bind(id);
        }
        for pair in pairs {
            q = q.bind(pair);
        }
        let started = std::time::Instant::now();
        let mut conn = self.writes.acquire().await.ok()?;
        let persistent = messages == ROW_CHUNK;
        if let Err(e) = q.persistent(persistent).execute(&mut *conn).await {
            tracing::debug!("one-trip batch failed, taking the general path: {e}");
            // A failure after BEGIN leaves the transaction open: close it before retrying.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return None;
        }
        tracing::debug!(
            ops = ops.len(),
            commit_us = started.elapsed().as_micros() as u64,
            "batch (one trip)"
        );
        Some(
            ops.iter()
                .map(|op| match op {
                    WriteOp::InsertMessage(m) => Ok(Outcome::Stored(m.seq)),
                    _ => Ok(Outcome::Done),
                })
                .collect(),
        )
    }

    fn next_message_seq(&self) -> i64 {
        self.message_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    fn known_users(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the accumulated messages and acknowledgements.
    async fn flush_bulk(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        bulk: &mut Bulk,
        out: &mut [Option<Result<Outcome, DbError>>],
    ) -> Result<(), DbError> {
        if !bulk.messages.is_empty() {
            let messages = std::mem::take(&mut bulk.messages);
            // Which recipients exist: a cache of known users (users are never deleted), then
            // one query for the rest.
            let unknown: Vec<String> = {
                let known = self.known_users();
                let mut v: Vec<String> = messages
                    .iter()
                    .filter(|(_, m)| !known.contains(&m.recipient))
                    .map(|(_, m)| m.recipient.clone())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            for chunk in unknown.chunks(IN_CHUNK) {
                let sql = format!(
                    "SELECT login FROM users WHERE login IN ({})",
                    placeholders(chunk.len(), 1)
                );
                let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
                for l in chunk {
                    q = q.bind(l);
                }
                let found = q.persistent(false).fetch_all(&mut **tx).await?;
                let mut known = self.known_users();
                if known.len() > MAX_KNOWN_USERS {
                    known.clear();
                }
                known.extend(found.into_iter().map(|r| r.0));
            }
            let mut valid = Vec::with_capacity(messages.len());
            {
                let known = self.known_users();
                for (i, m) in messages {
                    if known.contains(&m.recipient) {
                        valid.push((i, m));
                    } else {
                        out[i] = Some(Ok(Outcome::UnknownUser));
                    }
                }
            }
            for chunk in valid.chunks(ROW_CHUNK) {
                let sql = format!(
                    "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES {}",
                    placeholders(chunk.len(), 6)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (_, m) in chunk {
                    q = q
                        .bind(m.seq)
                        .bind(&m.id)
                        .bind(&m.sender)
                        .bind(&m.recipient)
                        .bind(m.at)
                        .bind(&m.text);
                }
                // A failing statement is rolled back on its own; the transaction goes on.
                let r = q
                    .persistent(chunk.len() == ROW_CHUNK)
                    .execute(&mut **tx)
                    .await;
                for (i, m) in chunk {
                    out[*i] = Some(match &r {
                        Ok(_) => Ok(Outcome::Stored(m.seq)),
                        Err(e) => Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))),
                    });
                }
            }
        }
        if !bulk.acks.is_empty() {
            let acks = std::mem::take(&mut bulk.acks);
            for chunk in acks.chunks(IN_CHUNK / 2) {
                // `id IN (…)` uses the unique index; the second test keeps each id to its own
                // recipient (logins never contain a space, so the pair is unambiguous).
                let sql = format!(
                    "UPDATE messages SET pending = 0 WHERE id IN ({}) \
                     AND (id || ' ' || recipient) IN ({})",
                    placeholders(chunk.len(), 1),
                    placeholders(chunk.len(), 1)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (_, id, _) in chunk {
                    q = q.bind(id);
                }
                for (_, id, recipient) in chunk {
                    q = q.bind(format!("{id} {recipient}"));
                }
                let r = q.persistent(false).execute(&mut **tx).await;
                for (i, _, _) in chunk {
                    out[*i] = Some(match &r {
                        Ok(_) => Ok(Outcome::Done),
                        Err(e) => Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Rows per multi-row INSERT (6 parameters each, well under SQLite's parameter limit).
const ROW_CHUNK: usize = 256;
/// Values per `IN (…)` list.
const IN_CHUNK: usize = 1024;
/// Bound on the known-users cache (cleared when exceeded).
const MAX_KNOWN_USERS: usize = 1_000_000;

/// Hot-path writes of a batch waiting to be written together.
#[derive(Default)]
struct Bulk {
    messages: Vec<(usize, StoredMessage)>,
    acks: Vec<(usize, String, String)>,
}

/// `(?, ?), (?, ?)` for `rows` rows of `cols` columns (`?, ?` for one column).
fn placeholders(rows: usize, cols: usize) -> String {
    let row = if cols == 1 {
        String::new()
    } else {
        format!("({})", vec!["?"; cols].join(", "))
    };
    let mut s = String::with_capacity(rows * (row.len() + 2));
    for k in 0..rows {
        if k > 0 {
            s.push_str(", ");
        }
        if cols == 1 {
            s.push('?');
        } else {
            s.push_str(&row);
        }
    }
    s
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
            sqlx::query("UPDATE messages SET pending = 0, read_at = ? WHERE id = ?")
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
            sqlx::query("UPDATE messages SET pending = 0 WHERE id = ? AND recipient = ?")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, recipient: &str, text: &str) -> WriteOp {
        WriteOp::InsertMessage(StoredMessage {
            seq: 0,
            id: id.into(),
            sender: "alice".into(),
            recipient: recipient.into(),
            at: 1,
            text: text.into(),
        })
    }

    fn user(login: &str) -> WriteOp {
        WriteOp::CreateUser {
            login: login.into(),
            sealed: vec![1, 2, 3],
            now: 1,
        }
    }

    async fn pending(db: &Db, login: &str) -> Vec<String> {
        db.pending_messages(login, 0, i64::MAX, 100)
            .await
            .expect("pending")
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    /// Messages and acknowledgements to known users go through the one-round-trip path, and
    /// what it stores is what the general path would have stored.
    #[tokio::test]
    async fn hot_batches_store_messages_and_acks_in_one_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).await.expect("open");
        let r = db
            .apply_batch(vec![user("alice"), user("bob")])
            .await
            .expect("users");
        assert!(r.iter().all(|o| matches!(o, Ok(Outcome::Done))));

        let mut hot = vec![message("m1", "bob", "one"), message("m2", "bob", "two")];
        let done = db.apply_hot_batch(&mut hot).await.expect("one trip taken");
        let seqs: Vec<i64> = done
            .iter()
            .map(|o| match o {
                Ok(Outcome::Stored(seq)) => *seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(seqs[0] < seqs[1]);
        assert_eq!(pending(&db, "bob").await, ["one", "two"]);

        // An acknowledgement and a new message together; an ack naming the wrong recipient
        // changes nothing.
        let mut hot = vec![
            WriteOp::Ack {
                id: "m1".into(),
                recipient: "bob".into(),
            },
            WriteOp::Ack {
                id: "m2".into(),
                recipient: "alice".into(),
            },
            message("m3", "bob", "three"),
        ];
        let done = db.apply_hot_batch(&mut hot).await.expect("one trip taken");
        assert!(matches!(done[0], Ok(Outcome::Done)));
        assert!(matches!(done[2], Ok(Outcome::Stored(_))));
        assert_eq!(pending(&db, "bob").await, ["two", "three"]);
    }

    /// Batches the one-trip path does not cover, or that fail in it, take the general path,
    /// which answers each operation on its own.
    #[tokio::test]
    async fn other_batches_and_failures_take_the_general_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).await.expect("open");
        db.apply_batch(vec![user("alice"), user("bob")])
            .await
            .expect("users");

        // Not a hot batch: an unknown recipient, or another kind of operation.
        assert!(db
            .apply_hot_batch(&mut [message("x1", "nobody", "lost")])
            .await
            .is_none());
        assert!(db.apply_hot_batch(&mut [user("carol")]).await.is_none());
        let r = db
            .apply_batch(vec![
                message("x1", "nobody", "lost"),
                message("x2", "bob", "kept"),
            ])
            .await
            .expect("batch");
        assert!(matches!(r[0], Ok(Outcome::UnknownUser)));
        assert!(matches!(r[1], Ok(Outcome::Stored(_))));

        // A duplicate id fails the one-trip query: rolled back, nothing of it is stored, and
        // the general path reports the failure for the messages of that statement.
        let r = db
            .apply_batch(vec![
                message("x2", "bob", "again"),
                message("x3", "bob", "new"),
            ])
            .await
            .expect("batch");
        assert!(r.iter().all(|o| o.is_err()), "{r:?}");
        assert_eq!(pending(&db, "bob").await, ["kept"]);

        // The connection is usable afterwards (no transaction left open).
        let r = db
            .apply_batch(vec![message("x4", "bob", "after")])
            .await
            .expect("batch");
        assert!(matches!(r[0], Ok(Outcome::Stored(_))));
        assert_eq!(pending(&db, "bob").await, ["kept", "after"]);
    }
}
