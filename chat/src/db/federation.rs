//! Federation's tables (PROTOCOL.md §12.6): the durable outbound queue per peer domain and
//! what a sent remote message leaves behind for its read receipt. Written with their own
//! short transactions on the write connection (they share no sequence with `messages`);
//! created at federation start-up on SQLite so that servers without federation never have
//! them, by the migration `0002_federation.sql` on PostgreSQL. The statements are shared by
//! both backends (`$N` parameters, see `db/mod.rs`).

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
        /// Not empty: the item replaces every queued item of `peer` with the same key (only
        /// the latest state of something needs to go, PROTOCOL.md §12.9); in flight ones are
        /// sent again under the new `qid`, an answer for the old one removes nothing.
        merge_key: String,
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
    /// Added in place of these items (same merge key), now gone.
    Replaced(Vec<QueuedItem>),
    /// Removed (the item, if it was there).
    Removed(Option<QueuedItem>),
    /// Remembered.
    Seen,
    /// Not added: the queue is at one of its [`QueueBounds`] (PostgreSQL; on SQLite the
    /// queue writer's counts in memory refuse first).
    Refused(QueueBound),
}

/// The outbound queue's bounds (0 = unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueBounds {
    /// Items per peer.
    pub per_peer: u64,
    /// Items per local sender.
    pub per_sender: u64,
    /// Peers with items.
    pub peers: u64,
    /// Peers one local sender may have items for.
    pub peers_per_sender: u64,
}

/// Which of the [`QueueBounds`] an item hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueBound {
    PerPeer,
    PerSender,
    Peers,
    SenderPeers,
}

/// Serialises the queue writes of all nodes sharing a PostgreSQL database (transaction lock),
/// so the bounds counted from the table hold for them all.
const FED_QUEUE_LOCK: i64 = 0x6d73_696d_0003;

/// The bounds check of [`Db::federation_apply`], per backend.
trait BoundCheck {
    async fn over_bound(
        &mut self,
        peer: &str,
        sender: &str,
        b: QueueBounds,
    ) -> Result<Option<QueueBound>, sqlx::Error>;
}

impl BoundCheck for sqlx::SqliteConnection {
    /// One node: the queue writer's counts in memory have checked already.
    async fn over_bound(
        &mut self,
        _: &str,
        _: &str,
        _: QueueBounds,
    ) -> Result<Option<QueueBound>, sqlx::Error> {
        Ok(None)
    }
}

impl BoundCheck for sqlx::PgConnection {
    async fn over_bound(
        &mut self,
        peer: &str,
        sender: &str,
        b: QueueBounds,
    ) -> Result<Option<QueueBound>, sqlx::Error> {
        over_bound(self, peer, sender, b).await
    }
}

/// On PostgreSQL, which bound (if any) one more item for `peer` from `sender` would pass,
/// counted from the table inside the transaction that holds [`FED_QUEUE_LOCK`].
async fn over_bound(
    tx: &mut sqlx::PgConnection,
    peer: &str,
    sender: &str,
    b: QueueBounds,
) -> Result<Option<QueueBound>, sqlx::Error> {
    let cap = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    // Replies to a peer (`s2s:<peer>`) count only against their own budget (queue.rs).
    // Peers with reply items get a dialer each: bounded by `peers` too, counted apart.
    let (for_peer, for_sender, peers, sender_has_peer, sender_peers): (i64, i64, i64, bool, i64) =
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM fed_queue WHERE peer = $1 AND (sender LIKE 's2s:%') = $3), \
                (SELECT COUNT(*) FROM fed_queue WHERE sender = $2 AND $2 <> ''), \
                (SELECT COUNT(DISTINCT peer) FROM fed_queue WHERE (sender LIKE 's2s:%') = $3), \
                EXISTS (SELECT 1 FROM fed_queue WHERE sender = $2 AND peer = $1), \
                (SELECT COUNT(DISTINCT peer) FROM fed_queue WHERE sender = $2 AND $2 <> '')",
        )
        .bind(peer)
        .bind(sender)
        .bind(crate::federation::queue::is_reply(sender))
        .fetch_one(&mut *tx)
        .await?;
    let reply = crate::federation::queue::is_reply(sender);
    let own = !reply && !sender.is_empty();
    Ok(if !reply && b.per_peer > 0 && for_peer >= cap(b.per_peer) {
        Some(QueueBound::PerPeer)
    } else if for_peer == 0 && b.peers > 0 && peers >= cap(b.peers) {
        Some(QueueBound::Peers)
    } else if own
        && !sender_has_peer
        && b.peers_per_sender > 0
        && sender_peers >= cap(b.peers_per_sender)
    {
        Some(QueueBound::SenderPeers)
    } else if b.per_sender > 0 && for_sender >= cap(b.per_sender) {
        Some(QueueBound::PerSender)
    } else {
        None
    })
}

impl Db {
    /// Creates the federation tables if missing.
    pub(crate) async fn federation_tables(&self) -> Result<(), DbError> {
        let Backend::Sqlite(store) = &self.backend else {
            // PostgreSQL: created by the migrations.
            return Ok(());
        };
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS fed_queue (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 peer TEXT NOT NULL,
                 line TEXT NOT NULL,
                 sender TEXT NOT NULL DEFAULT '',
                 message_id TEXT NOT NULL DEFAULT '',
                 expires_at INTEGER NOT NULL,
                 merge_key TEXT NOT NULL DEFAULT ''
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
             CREATE TABLE IF NOT EXISTS fed_subs (
                 subject TEXT NOT NULL,
                 watcher TEXT NOT NULL,
                 peer TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (subject, watcher)
             );
             CREATE INDEX IF NOT EXISTS fed_subs_peer ON fed_subs (peer, subject);
             CREATE INDEX IF NOT EXISTS fed_subs_at ON fed_subs (at);
             CREATE TABLE IF NOT EXISTS fed_seen (
                 peer TEXT NOT NULL,
                 id TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (peer, id)
             );
             CREATE INDEX IF NOT EXISTS fed_seen_at ON fed_seen (peer, at);",
        )
        .execute(&store.writes)
        .await?;
        self.federation_columns().await?;
        sqlx::raw_sql(
            "CREATE INDEX IF NOT EXISTS fed_queue_merge ON fed_queue (peer, merge_key) \
             WHERE merge_key <> ''",
        )
        .execute(&store.writes)
        .await?;
        Ok(())
    }

    /// Adds the columns later versions gave the federation tables to SQLite tables made before
    /// them (PostgreSQL: the migrations); tables that do not exist are left alone.
    pub(crate) async fn federation_columns(&self) -> Result<(), DbError> {
        let Backend::Sqlite(store) = &self.backend else {
            return Ok(());
        };
        for (table, column, ddl) in [(
            "fed_queue",
            "merge_key",
            "ALTER TABLE fed_queue ADD COLUMN merge_key TEXT NOT NULL DEFAULT ''",
        )] {
            let (tables, columns): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1), \
                        (SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2)",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&store.writes)
            .await?;
            if tables > 0 && columns == 0 {
                sqlx::raw_sql(ddl).execute(&store.writes).await?;
            }
        }
        Ok(())
    }

    /// Applies a batch of queue writes in one durable transaction, results in order.
    /// On PostgreSQL each new item is first checked against `bounds` from the table (several
    /// nodes add items); SQLite's one node counts in memory (`federation::queue`).
    pub(crate) async fn federation_apply(
        &self,
        batch: &[QueueWrite],
        bounds: QueueBounds,
    ) -> Result<Vec<QueueDone>, DbError> {
        writes!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut out = Vec::with_capacity(batch.len());
            let postgres = matches!(self.backend, Backend::Postgres(_));
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(FED_QUEUE_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
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
                        merge_key,
                    } => {
                        // The items a merge replaces do not count against the bounds (they
                        // go), but a refused item must not take them away: the deletion runs
                        // under a savepoint rolled back on refusal (the peer gets the older
                        // item rather than neither). SQLite's bounds were checked in memory.
                        let savepoint = postgres && !merge_key.is_empty();
                        if savepoint {
                            sqlx::query("SAVEPOINT fed_merge").execute(&mut *tx).await?;
                        }
                        let replaced: Vec<ItemRow> = if merge_key.is_empty() {
                            Vec::new()
                        } else {
                            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                "DELETE FROM fed_queue WHERE peer = $1 AND merge_key = $2 \
                                 RETURNING {ITEM_COLUMNS}"
                            )))
                            .bind(peer)
                            .bind(merge_key)
                            .fetch_all(&mut *tx)
                            .await?
                        };
                        let hit = BoundCheck::over_bound(&mut *tx, peer, sender, bounds).await?;
                        if let Some(hit) = hit {
                            if savepoint {
                                sqlx::query("ROLLBACK TO SAVEPOINT fed_merge")
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            out.push(QueueDone::Refused(hit));
                            continue;
                        }
                        if savepoint {
                            sqlx::query("RELEASE SAVEPOINT fed_merge")
                                .execute(&mut *tx)
                                .await?;
                        }
                        sqlx::query(
                            "INSERT INTO fed_queue \
                             (peer, line, sender, message_id, expires_at, merge_key) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(peer)
                        .bind(line)
                        .bind(sender)
                        .bind(message_id)
                        .bind(expires_at)
                        .bind(merge_key)
                        .execute(&mut *tx)
                        .await?;
                        if !message_id.is_empty() {
                            sqlx::query(
                                "INSERT INTO fed_sent (id, sender, recipient, at) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            )
                            .bind(message_id)
                            .bind(sender)
                            .bind(recipient)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                        }
                        out.push(if replaced.is_empty() {
                            QueueDone::Added
                        } else {
                            QueueDone::Replaced(replaced.into_iter().map(item).collect())
                        });
                    }
                    QueueWrite::Remove { peer, seq } => {
                        let row: Option<ItemRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "DELETE FROM fed_queue WHERE peer = $1 AND seq = $2 RETURNING {ITEM_COLUMNS}"
                        )))
                        .bind(peer)
                        .bind(seq)
                        .fetch_optional(&mut *tx)
                        .await?;
                        out.push(QueueDone::Removed(row.map(item)));
                    }
                    QueueWrite::Seen { peer, id, at } => {
                        sqlx::query(
                            "INSERT INTO fed_seen (peer, id, at) VALUES ($1, $2, $3) \
                             ON CONFLICT DO NOTHING",
                        )
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
        })
    }

    /// Items queued per (peer, local sender) (the queue writer's counts at start-up).
    pub(crate) async fn federation_counts_by_sender(
        &self,
    ) -> Result<Vec<(String, String, i64)>, DbError> {
        Ok(read!(self, p => sqlx::query_as(
            "SELECT peer, sender, COUNT(*) FROM fed_queue GROUP BY peer, sender"
        )
        .fetch_all(p)
        .await)?)
    }

    /// The next queued items of `peer` after `after`, in order.
    pub(crate) async fn federation_queued(
        &self,
        peer: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<QueuedItem>, DbError> {
        let rows: Vec<ItemRow> = read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ITEM_COLUMNS} FROM fed_queue WHERE peer = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(peer)
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// Peers with queued items (to start their links after a restart).
    pub(crate) async fn federation_peers(&self) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as("SELECT DISTINCT peer FROM fed_queue")
            .fetch_all(p)
            .await)?;
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
        let rows: Vec<ItemRow> = writes!(self, w => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "DELETE FROM fed_queue WHERE seq IN \
             (SELECT seq FROM fed_queue WHERE expires_at <= $1 LIMIT $2) RETURNING {ITEM_COLUMNS}"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(w)
        .await)?;
        writes!(self, w => sqlx::query("DELETE FROM fed_sent WHERE at < $1")
            .bind(forget_before)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(rows.into_iter().map(item).collect())
    }

    /// The local sender of a message sent to `recipient` (a remote address), if it was.
    pub(crate) async fn federation_sent_by(
        &self,
        id: &str,
        recipient: &str,
    ) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT sender FROM fed_sent WHERE id = $1 AND recipient = $2",
        )
        .bind(id)
        .bind(recipient)
        .fetch_optional(p)
        .await)?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a read receipt from a remote reader for a local sender (unless that message
    /// already has one); returns its seq for live delivery. On PostgreSQL the transaction
    /// takes the batch lock first, like every write that hands out `receipts.seq` (commit
    /// order is sequence order, `db/mod.rs`).
    pub(crate) async fn federation_store_receipt(
        &self,
        sender: &str,
        id: &str,
        reader: &str,
        at: i64,
    ) -> Result<Option<i64>, DbError> {
        macro_rules! store {
            ($tx:ident) => {{
                let seen: Option<(i64,)> = sqlx::query_as(
                    "SELECT seq FROM receipts WHERE message_id = $1 AND sender = $2",
                )
                .bind(id)
                .bind(sender)
                .fetch_optional(&mut *$tx)
                .await?;
                if seen.is_some() {
                    return Ok(None);
                }
                let (seq,): (i64,) = sqlx::query_as(
                    "INSERT INTO receipts (sender, message_id, reader, at) \
                     VALUES ($1, $2, $3, $4) RETURNING seq",
                )
                .bind(sender)
                .bind(id)
                .bind(reader)
                .bind(at)
                .fetch_one(&mut *$tx)
                .await?;
                $tx.commit().await?;
                Ok(Some(seq))
            }};
        }
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.writes.begin().await?;
                store!(tx)
            }
            Backend::Postgres(b) => {
                let mut tx = b.writes.begin().await?;
                let node = b.node.load(std::sync::atomic::Ordering::Relaxed);
                super::postgres::lock_batch(&mut tx, 0, node).await?;
                store!(tx)
            }
        }
    }

    /// Whether a message with this id is stored (from anyone: ids are unique), or `peer`
    /// delivered it within the dedupe window.
    pub(crate) async fn federation_known_message(
        &self,
        peer: &str,
        id: &str,
    ) -> Result<bool, DbError> {
        // Both columns are 64-bit integers on either backend (the row is only tested).
        let row: Option<(i64,)> = read!(self, p => sqlx::query_as(
            "SELECT at FROM fed_seen WHERE peer = $1 AND id = $2 \
             UNION ALL SELECT seq FROM messages WHERE id = $2 LIMIT 1",
        )
        .bind(peer)
        .bind(id)
        .fetch_optional(p)
        .await)?;
        Ok(row.is_some())
    }

    /// Forgets remembered message ids older than `before`, and each peer's oldest beyond
    /// `max_per_peer` (0 = no bound; rows as old as the newest one beyond it stay too);
    /// returns how many were forgotten.
    pub(crate) async fn federation_forget_seen(
        &self,
        before: i64,
        max_per_peer: u64,
    ) -> Result<u64, DbError> {
        let mut n = writes!(self, w => sqlx::query("DELETE FROM fed_seen WHERE at < $1")
            .bind(before)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        if max_per_peer == 0 {
            return Ok(n);
        }
        let cap = i64::try_from(max_per_peer).unwrap_or(i64::MAX);
        let over: Vec<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT peer FROM fed_seen GROUP BY peer HAVING COUNT(*) > $1"
        )
        .bind(cap)
        .fetch_all(p)
        .await)?;
        for (peer,) in over {
            n += writes!(self, w => sqlx::query(
                "DELETE FROM fed_seen WHERE peer = $1 AND at < \
                 (SELECT at FROM fed_seen WHERE peer = $1 ORDER BY at DESC LIMIT 1 OFFSET $2)",
            )
            .bind(&peer)
            .bind(cap)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        }
        Ok(n)
    }
}

/// A `fed_queue` row as read.
type ItemRow = (String, i64, String, String, String);

fn item((peer, seq, line, sender, message_id): ItemRow) -> QueuedItem {
    QueuedItem {
        peer,
        seq,
        line,
        sender,
        message_id,
    }
}
