//! Federation's tables (PROTOCOL.md §12.6): the durable outbound queue per peer domain and
//! what a sent remote message leaves behind for its read receipt. Written with their own
//! short transactions on the write connection (they share no sequence with `messages`);
//! created at federation start-up so that servers without federation never have them.

use super::{Db, DbError};

/// One queued packet for a peer.
#[derive(Debug, Clone)]
pub(crate) struct QueuedItem {
    /// Queue order; also the `qid=` of the packet on the link.
    pub seq: i64,
    /// The packet without `qid=`, one wire line.
    pub line: String,
    /// Local sender's login for messages (told if the message fails), empty otherwise.
    pub sender: String,
    /// Message id for messages, empty otherwise.
    pub message_id: String,
}

/// Result of queueing a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Stored with this seq.
    Stored(i64),
    /// The peer's queue is full.
    Full,
}

const ITEM_COLUMNS: &str = "seq, line, sender, message_id";

impl Db {
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
             CREATE INDEX IF NOT EXISTS fed_sent_at ON fed_sent (at);",
        )
        .execute(&self.writes)
        .await?;
        Ok(())
    }

    /// Queues a message for `peer` (bounded by `max` items per peer) and records it as sent,
    /// in one durable transaction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn federation_queue_message(
        &self,
        peer: &str,
        line: &str,
        sender: &str,
        message_id: &str,
        recipient: &str,
        at: i64,
        expires_at: i64,
        max: u64,
    ) -> Result<Queued, DbError> {
        let mut tx = self.writes.begin().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM fed_queue WHERE peer = ?")
            .bind(peer)
            .fetch_one(&mut *tx)
            .await?;
        if max > 0 && n as u64 >= max {
            return Ok(Queued::Full);
        }
        let (seq,): (i64,) = sqlx::query_as(
            "INSERT INTO fed_queue (peer, line, sender, message_id, expires_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(peer)
        .bind(line)
        .bind(sender)
        .bind(message_id)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO fed_sent (id, sender, recipient, at) VALUES (?, ?, ?, ?)",
        )
        .bind(message_id)
        .bind(sender)
        .bind(recipient)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Queued::Stored(seq))
    }

    /// Queues a packet that is not a message (a receipt) for `peer`; dropped when the
    /// peer's queue is full.
    pub(crate) async fn federation_queue_other(
        &self,
        peer: &str,
        line: &str,
        expires_at: i64,
        max: u64,
    ) -> Result<Queued, DbError> {
        let mut tx = self.writes.begin().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM fed_queue WHERE peer = ?")
            .bind(peer)
            .fetch_one(&mut *tx)
            .await?;
        if max > 0 && n as u64 >= max {
            return Ok(Queued::Full);
        }
        let (seq,): (i64,) = sqlx::query_as(
            "INSERT INTO fed_queue (peer, line, expires_at) VALUES (?, ?, ?) RETURNING seq",
        )
        .bind(peer)
        .bind(line)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Queued::Stored(seq))
    }

    /// The next queued items of `peer` after `after`, in order.
    pub(crate) async fn federation_queued(
        &self,
        peer: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<QueuedItem>, DbError> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
            format!(
                "SELECT {ITEM_COLUMNS} FROM fed_queue WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?"
            ),
        ))
        .bind(peer)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// Removes an item the peer acknowledged (or refused); returns it if it was there.
    pub(crate) async fn federation_dequeue(
        &self,
        peer: &str,
        seq: i64,
    ) -> Result<Option<QueuedItem>, DbError> {
        let row: Option<(i64, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("DELETE FROM fed_queue WHERE peer = ? AND seq = ? RETURNING {ITEM_COLUMNS}"),
        ))
        .bind(peer)
        .bind(seq)
        .fetch_optional(&self.writes)
        .await?;
        Ok(row.map(item))
    }

    /// Peers with queued items (to start their links after a restart).
    pub(crate) async fn federation_peers(&self) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT peer FROM fed_queue")
            .fetch_all(&self.pool)
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
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "DELETE FROM fed_queue WHERE seq IN \
                 (SELECT seq FROM fed_queue WHERE expires_at <= ? LIMIT ?) RETURNING {ITEM_COLUMNS}"
            )))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.writes)
            .await?;
        sqlx::query("DELETE FROM fed_sent WHERE at < ?")
            .bind(forget_before)
            .execute(&self.writes)
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
                .fetch_optional(&self.pool)
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
        let mut tx = self.writes.begin().await?;
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

    /// Whether a message with this id is stored.
    pub(crate) async fn message_exists(&self, id: &str) -> Result<bool, DbError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM messages WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

fn item((seq, line, sender, message_id): (i64, String, String, String)) -> QueuedItem {
    QueuedItem {
        seq,
        line,
        sender,
        message_id,
    }
}
