//! What the cluster's readers read (`cluster::fanout`): the stored items above given sequence
//! positions, each with the node that committed it (`origin`). PostgreSQL only: one node on
//! SQLite has no one to feed. Commit order is sequence order on PostgreSQL (see `db/mod.rs`),
//! so nothing below a returned item can become visible later.

use super::notices::{NoticeRow, NOTICE_COLS};
use super::rows::OFFER_COLS;
use super::*;

/// A message with the node that committed it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FedMessage {
    #[sqlx(flatten)]
    pub(crate) message: StoredMessage,
    pub(crate) origin: i64,
}

/// A read receipt for `sender`, with the node that committed it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FedReceipt {
    pub(crate) sender: String,
    #[sqlx(flatten)]
    pub(crate) receipt: Receipt,
    pub(crate) origin: i64,
}

/// An offer with its sequence number and the node that committed it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FedOffer {
    pub(crate) seq: i64,
    #[sqlx(flatten)]
    pub(crate) offer: Offer,
    pub(crate) origin: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct FedNoticeRow {
    seq: i64,
    #[sqlx(flatten)]
    notice: NoticeRow,
    origin: i64,
}

/// A stored result with its sequence number and the node that committed it.
#[derive(Debug)]
pub(crate) struct FedNotice {
    pub(crate) seq: i64,
    pub(crate) notice: Notice,
    pub(crate) origin: i64,
}

/// Items above some positions, per stream, in sequence order.
#[derive(Debug, Default)]
pub(crate) struct Fed {
    pub(crate) messages: Vec<FedMessage>,
    pub(crate) receipts: Vec<FedReceipt>,
    pub(crate) offers: Vec<FedOffer>,
    pub(crate) notices: Vec<FedNotice>,
}

impl Db {
    /// This node's own message `seq` to `recipient`, with its text (its batch was in doubt:
    /// [`Db::fed_after`] leaves the text of own messages out). Matched on node and recipient
    /// too: after a failover that lost the batch, another node may have reused the number for
    /// someone else's message, which must not reach this recipient.
    pub(crate) async fn fed_message(
        &self,
        seq: i64,
        recipient: &str,
    ) -> Result<Option<FedMessage>, DbError> {
        let Backend::Postgres(s) = &self.backend else {
            return Ok(None);
        };
        let me = s.node.load(std::sync::atomic::Ordering::Relaxed);
        Ok(sqlx::query_as(
            "SELECT seq, id, sender, recipient, at, body, origin FROM messages \
             WHERE seq = $1 AND recipient = $2 AND origin = $3",
        )
        .bind(seq)
        .bind(recipient)
        .bind(me)
        .fetch_optional(&s.pool)
        .await?)
    }

    /// Up to `limit` items per stream above `after` (messages, receipts, offers, notices),
    /// skipping streams whose `want` is false. Every message, acknowledged or not (a user's
    /// other sessions get it live whatever one session did with it); receipts delivered or
    /// not; offers that were shown (not hidden); every stored result.
    pub(crate) async fn fed_after(
        &self,
        after: [i64; 4],
        want: [bool; 4],
        limit: i64,
    ) -> Result<Fed, DbError> {
        let Backend::Postgres(s) = &self.backend else {
            return Ok(Fed::default());
        };
        let p = &s.pool;
        let me = s.node.load(std::sync::atomic::Ordering::Relaxed);
        let mut fed = Fed::default();
        if want[0] {
            // This node's own messages only move the reader's position (it pushed them when
            // it committed them): their text is not fetched.
            fed.messages = sqlx::query_as(
                "SELECT seq, id, sender, recipient, at, \
                 CASE WHEN origin = $3 THEN '' ELSE body END AS body, origin FROM messages \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after[0])
            .bind(limit)
            .bind(me)
            .fetch_all(p)
            .await?;
        }
        if want[1] {
            fed.receipts = sqlx::query_as(
                "SELECT sender, seq, message_id, reader, at, origin FROM receipts \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after[1])
            .bind(limit)
            .fetch_all(p)
            .await?;
        }
        if want[2] {
            fed.offers = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT seq, {OFFER_COLS}, origin FROM offers \
                 WHERE seq > $1 AND state <> 'hidden' ORDER BY seq LIMIT $2"
            )))
            .bind(after[2])
            .bind(limit)
            .fetch_all(p)
            .await?;
        }
        if want[3] {
            let rows: Vec<FedNoticeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT seq, {NOTICE_COLS}, origin FROM notices \
                 WHERE seq > $1 ORDER BY seq LIMIT $2"
            )))
            .bind(after[3])
            .bind(limit)
            .fetch_all(p)
            .await?;
            fed.notices = rows
                .into_iter()
                .filter_map(|r| match Notice::try_from(r.notice) {
                    Ok(notice) => Some(FedNotice {
                        seq: r.seq,
                        notice,
                        origin: r.origin,
                    }),
                    Err(e) => {
                        tracing::warn!(seq = r.seq, "{e}");
                        None
                    }
                })
                .collect();
        }
        Ok(fed)
    }
}
