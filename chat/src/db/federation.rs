//! Federation's tables (PROTOCOL.md §12.6): the durable outbound queue per peer domain and
//! what a sent remote message leaves behind for its read receipt. Written with their own
//! short transactions on the write connection (they share no sequence with `messages`);
//! created at federation start-up so that servers without federation never have them.
//! SQLite only for now: federation refuses to start on PostgreSQL.

use super::{Backend, Db, DbError};

/// One queued packet for a peer.
#[derive(Debug, Clone)]
pub(crate) struct QueuedItem {
    /// The peer domain.
    pub peer: String,
    /// Queue order; also the `qid=` of the packet on the link.
    pub seq: i64,
    /// The packet without `qid=`, one wire line.
    pub line: String,
    /// Local sender's login for messages (told if the message fails), empty otherwise.
    pub sender: String,
    /// Message id for messages, empty otherwise.
    pub message_id: String,
}

const ITEM_COLUMNS: &str = "peer, seq, line, sender, message_id";

/// One write to the outbound queue; a batch of them is one transaction
/// ([`Db::federation_apply`]).
#[derive(Debug, Clone)]
pub(crate) enum QueueWrite {
    /// Queue a packet for `peer`; for a message (`message_id` not empty) also remember it as
    /// sent by `sender` to `recipient`, for its receipt.
    Add {
        peer: String,
        line: String,
        sender: String,
        message_id: String,
        recipient: String,
        at: i64,
        expires_at: i64,
    },
    /// Remove an item the peer answered.
    Remove { peer: String, seq: i64 },
    /// Remember that `peer` delivered message `id` (inbound dedupe, [`Db::federation_known_message`]).
    Seen { peer: String, id: String, at: i64 },
}

/// The outcome of a [`QueueWrite`].
#[derive(Debug)]
pub(crate) enum QueueDone {
    /// Added.
    Added,
    /// Removed (the item, if it was there).
    Removed(Option<QueuedItem>),
    /// Remembered.
    Seen,
}

impl Db {
    /// The SQLite store (federation's tables exist only there so far).
    fn federation_store(&self) -> Result<&super::sqlite::Store, DbError> {
        match &self.backend {
            Backend::Sqlite(b) => Ok(b),
            Backend::Postgres(_) => Err(DbError::Io(std::io::Error::other(
                "federation needs the SQLite backend in this version",
            ))),
        }
    }

    /// Creates the federation tables if missing.
    pub(crate) async fn federation_tables(&self) -> Result<(), DbError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS fed_queue (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 peer TEXT NOT NULL,
                 line TEXT NOT NULL,
                 sender TEXT NOT NULL DEFAULT '',
                 message_id TEXT NOT NULL DEFAULT '',
                 expires_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS fed_queue_peer ON fed_queue (peer, seq);
             CREATE INDEX IF NOT EXISTS fed_queue_expiry ON fed_queue (expires_at);
             CREATE TABLE IF NOT EXISTS fed_sent (
                 id TEXT PRIMARY KEY,
                 sender TEXT NOT NULL,
                 recipient TEXT NOT NULL,
                 at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS fed_sent_at ON fed_sent (at);
             CREATE TABLE IF NOT EXISTS fed_seen (
                 peer TEXT NOT NULL,
                 id TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (peer, id)
             );
             CREATE INDEX IF NOT EXISTS fed_seen_at ON fed_seen (peer, at);",
        )
        .execute(&self.federation_store()?.writes)
        .await?;
        Ok(())
    }

    /// Applies a batch of queue writes in one durable transaction, results in order.
    pub(crate) async fn federation_apply(
        &self,
        batch: &[QueueWrite],
    ) -> Result<Vec<QueueDone>, DbError> {
        let mut tx = self.federation_store()?.writes.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for w in batch {
            match w {
                QueueWrite::Add {
                    peer,
                    line,
                    sender,
                    message_id,
                    recipient,
                    at,
                    expires_at,
                } => {
                    sqlx::query(
                        "INSERT INTO fed_queue (peer, line, sender, message_id, expires_at) \
                         VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(peer)
                    .bind(line)
                    .bind(sender)
                    .bind(message_id)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                    if !message_id.is_empty() {
                        sqlx::query(
                            "INSERT OR IGNORE INTO fed_sent (id, sender, recipient, at) \
                             VALUES (?, ?, ?, ?)",
                        )
                        .bind(message_id)
                        .bind(sender)
                        .bind(recipient)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    out.push(QueueDone::Added);
                }
                QueueWrite::Remove { peer, seq } => {
                    let row: Option<(String, i64, String, String, String)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "DELETE FROM fed_queue WHERE peer = ? AND seq = ? RETURNING {ITEM_COLUMNS}"
                        )))
                        .bind(peer)
                        .bind(seq)
                        .fetch_optional(&mut *tx)
                        .await?;
                    out.push(QueueDone::Removed(row.map(item)));
                }
                QueueWrite::Seen { peer, id, at } => {
                    sqlx::query("INSERT OR IGNORE INTO fed_seen (peer, id, at) VALUES (?, ?, ?)")
                        .bind(peer)
                        .bind(id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    out.push(QueueDone::Seen);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Items queued per (peer, local sender) (the queue writer's counts at start-up).
    pub(crate) async fn federation_counts_by_sender(
        &self,
    ) -> Result<Vec<(String, String, i64)>, DbError> {
        Ok(
            sqlx::query_as("SELECT peer, sender, COUNT(*) FROM fed_queue GROUP BY peer, sender")
                .fetch_all(&self.federation_store()?.pool)
                .await?,
        )
    }

    /// The next queued items of `peer` after `after`, in order.
    pub(crate) async fn federation_queued(
        &self,
        peer: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<QueuedItem>, DbError> {
        let rows: Vec<(String, i64, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
            format!(
                "SELECT {ITEM_COLUMNS} FROM fed_queue WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?"
            ),
        ))
        .bind(peer)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.federation_store()?.pool)
        .await?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// Peers with queued items (to start their links after a restart).
    pub(crate) async fn federation_peers(&self) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT peer FROM fed_queue")
            .fetch_all(&self.federation_store()?.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Deletes queued items past their expiry (at most `limit`) and `fed_sent` rows older
    /// than `forget_before`; returns the expired items.
    pub(crate) async fn federation_expire(
        &self,
        now: i64,
        forget_before: i64,
        limit: i64,
    ) -> Result<Vec<QueuedItem>, DbError> {
        let rows: Vec<(String, i64, String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "DELETE FROM fed_queue WHERE seq IN \
                 (SELECT seq FROM fed_queue WHERE expires_at <= ? LIMIT ?) RETURNING {ITEM_COLUMNS}"
            )))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.federation_store()?.writes)
            .await?;
        sqlx::query("DELETE FROM fed_sent WHERE at < ?")
            .bind(forget_before)
            .execute(&self.federation_store()?.writes)
            .await?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// The local sender of a message sent to `recipient` (a remote address), if it was.
    pub(crate) async fn federation_sent_by(
        &self,
        id: &str,
        recipient: &str,
    ) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT sender FROM fed_sent WHERE id = ? AND recipient = ?")
                .bind(id)
                .bind(recipient)
                .fetch_optional(&self.federation_store()?.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a read receipt from a remote reader for a local sender (unless that message
    /// already has one); returns its seq for live delivery.
    pub(crate) async fn federation_store_receipt(
        &self,
        sender: &str,
        id: &str,
        reader: &str,
        at: i64,
    ) -> Result<Option<i64>, DbError> {
        let mut tx = self.federation_store()?.writes.begin().await?;
        let seen: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM receipts WHERE message_id = ? AND sender = ?")
                .bind(id)
                .bind(sender)
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Ok(None);
        }
        let (seq,): (i64,) = sqlx::query_as(
            "INSERT INTO receipts (sender, message_id, reader, at) VALUES (?, ?, ?, ?) RETURNING seq",
        )
        .bind(sender)
        .bind(id)
        .bind(reader)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    /// Whether a message with this id is stored (from anyone: ids are unique), or `peer`
    /// delivered it within the dedupe window.
    pub(crate) async fn federation_known_message(
        &self,
        peer: &str,
        id: &str,
    ) -> Result<bool, DbError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM fed_seen WHERE peer = ? AND id = ? \
             UNION ALL SELECT 1 FROM messages WHERE id = ? LIMIT 1",
        )
        .bind(peer)
        .bind(id)
        .bind(id)
        .fetch_optional(&self.federation_store()?.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Forgets remembered message ids older than `before`, and each peer's oldest beyond
    /// `max_per_peer` (0 = no bound); returns how many were forgotten.
    pub(crate) async fn federation_forget_seen(
        &self,
        before: i64,
        max_per_peer: u64,
    ) -> Result<u64, DbError> {
        let store = self.federation_store()?;
        let mut n = sqlx::query("DELETE FROM fed_seen WHERE at < ?")
            .bind(before)
            .execute(&store.writes)
            .await?
            .rows_affected();
        if max_per_peer == 0 {
            return Ok(n);
        }
        let cap = i64::try_from(max_per_peer).unwrap_or(i64::MAX);
        let over: Vec<(String,)> =
            sqlx::query_as("SELECT peer FROM fed_seen GROUP BY peer HAVING COUNT(*) > ?")
                .bind(cap)
                .fetch_all(&store.pool)
                .await?;
        for (peer,) in over {
            n += sqlx::query(
                "DELETE FROM fed_seen WHERE peer = ? AND rowid IN \
                 (SELECT rowid FROM fed_seen WHERE peer = ? ORDER BY at DESC LIMIT -1 OFFSET ?)",
            )
            .bind(&peer)
            .bind(&peer)
            .bind(cap)
            .execute(&store.writes)
            .await?
            .rows_affected();
        }
        Ok(n)
    }
}

fn item(
    (peer, seq, line, sender, message_id): (String, i64, String, String, String),
) -> QueuedItem {
    QueuedItem {
        peer,
        seq,
        line,
        sender,
        message_id,
    }
}
