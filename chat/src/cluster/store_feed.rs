//! The [`Feed`] of the real store: messages, receipts, offers and stored results read by
//! sequence position (`Db::fed_after`), encoded as the packets the committing node pushed to
//! its own sessions.

use super::fanout::{Feed, FeedItem, Positions};
use crate::cmd::files::request_packet_in;
use crate::cmd::messages::{message_packet_in, receipt_packet_in};
use crate::db::commit::Writer;
use crate::db::{Db, DbError, WriteOp};
use crate::hub::{encode, Stream, STREAMS};
use bytes::Bytes;
use futures::future::BoxFuture;

/// The store's stored streams, for a cluster's reader.
pub(crate) struct StoreFeed {
    db: Db,
    writer: Writer,
    domain: String,
}

impl StoreFeed {
    /// The feed of `db` (whose items are addressed in `domain`); `writer` records receipts
    /// delivered here.
    pub(crate) fn new(db: Db, writer: Writer, domain: String) -> StoreFeed {
        StoreFeed { db, writer, domain }
    }
}

fn sql(e: DbError) -> sqlx::Error {
    match e {
        DbError::Sql(e) => e,
        e => sqlx::Error::Protocol(e.to_string()),
    }
}

impl Feed for StoreFeed {
    fn heads(&self) -> BoxFuture<'_, Result<Positions, sqlx::Error>> {
        Box::pin(async move {
            let m = self.db.marks().await.map_err(sql)?;
            Ok(Positions([m.messages, m.receipts, m.offers, m.notices]))
        })
    }

    fn after(
        &self,
        after: Positions,
        want: [bool; STREAMS],
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<FeedItem>, sqlx::Error>> {
        Box::pin(async move {
            let fed = self
                .db
                .fed_after(after.0, want, limit.min(i64::MAX as usize) as i64)
                .await
                .map_err(sql)?;
            let d = self.domain.as_str();
            let mut items = Vec::with_capacity(
                fed.messages.len() + fed.receipts.len() + fed.offers.len() + fed.notices.len(),
            );
            for m in fed.messages {
                // A body already scrubbed (this node was cut off from the cluster for a while):
                // nothing to push, but the position moves past it.
                let bytes = match m.message.text.is_empty() {
                    true => Bytes::new(),
                    false => encode(&message_packet_in(d, &m.message)),
                };
                items.push(FeedItem {
                    stream: Stream::Messages,
                    seq: m.message.seq,
                    origin: m.origin,
                    login: m.message.recipient,
                    bytes,
                });
            }
            for r in fed.receipts {
                let p =
                    receipt_packet_in(d, &r.receipt.message_id, &r.receipt.reader, r.receipt.at);
                items.push(FeedItem {
                    stream: Stream::Receipts,
                    seq: r.receipt.seq,
                    origin: r.origin,
                    login: r.sender,
                    bytes: encode(&p),
                });
            }
            for o in fed.offers {
                items.push(FeedItem {
                    stream: Stream::Offers,
                    seq: o.seq,
                    origin: o.origin,
                    bytes: encode(&request_packet_in(d, &o.offer)),
                    login: o.offer.recipient,
                });
            }
            for n in fed.notices {
                items.push(FeedItem {
                    stream: Stream::Notices,
                    seq: n.seq,
                    origin: n.origin,
                    bytes: encode(&n.notice.body.to_packet()),
                    login: n.notice.login,
                });
            }
            Ok(items)
        })
    }

    fn own_bytes<'a>(
        &'a self,
        stream: Stream,
        seq: i64,
        login: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, sqlx::Error>> {
        Box::pin(async move {
            // Only messages come without their text (`Db::fed_after`).
            if stream != Stream::Messages {
                return Ok(None);
            }
            let m = self.db.fed_message(seq, login).await.map_err(sql)?;
            Ok(Some(match m {
                Some(m) if !m.message.text.is_empty() => {
                    encode(&message_packet_in(&self.domain, &m.message))
                }
                _ => Bytes::new(),
            }))
        })
    }

    fn passed(&self, pos: &Positions) {
        self.db
            .set_messages_passed(pos.0[Stream::Messages as usize]);
    }

    fn delivered(&self, items: Vec<(Stream, i64)>) {
        let receipts: Vec<i64> = items
            .into_iter()
            .filter(|(s, _)| *s == Stream::Receipts)
            .map(|(_, seq)| seq)
            .collect();
        if !receipts.is_empty() {
            // Marked delivered (kept until every node has passed it): not repeated at the
            // sender's next login, as on one node.
            self.writer
                .write_detached(WriteOp::DeleteReceipts(receipts));
        }
    }
}
