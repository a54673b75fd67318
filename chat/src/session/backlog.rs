//! The login backlog (PROTOCOL.md §4.5, §5.4): what was stored for the user while it was
//! offline, sent right after `CONNECT-OK` up to the high-water marks taken at login: messages
//! (page by page), read receipts, file offers, file results, then open presence requests.

use super::Session;
use crate::clock::datetime;
use crate::cmd::context::Ctx;
use crate::cmd::files::request_packet;
use crate::cmd::messages::message_packet;
use crate::cmd::privacy::requests_at_login;
use crate::db::{Backlog, Marks, WriteOp};
use msim_shared::proto::{Body, ReadReceipt};
use tracing::warn;

/// Pending messages sent per database page at login.
const PAGE: i64 = 256;

impl Session<'_> {
    /// Sends the backlog of `login`; a failed write closes the connection. `backlog`: which
    /// stored parts hold anything up to `marks` (read with them): the others are not read.
    pub(super) async fn replay_backlog(
        &mut self,
        ctx: &Ctx<'_>,
        login: &str,
        marks: &Marks,
        backlog: Backlog,
    ) {
        let now = ctx.now();
        // Every part of the backlog is bounded by the marks taken at login, so its reads do
        // not depend on each other: they run at once (on the readers' pool) instead of one
        // after the other, and the session gets to the requests waiting behind the backlog
        // (a `send-file`'s offer) sooner. What is sent, and in which order, is unchanged.
        // Presence requests are always read: they have no mark, and in a cluster they must be
        // read after the login's presence row is committed (`cluster::mirror`).
        let (first_page, receipts, offers, notices, presence_requests) = tokio::join!(
            when(backlog.messages, || ctx.db.pending_messages(
                login,
                0,
                marks.messages,
                PAGE
            )),
            when(backlog.receipts, || ctx
                .db
                .pending_receipts(login, marks.receipts)),
            when(backlog.offers, || ctx.db.pending_offers(
                login,
                now,
                marks.offers
            )),
            when(backlog.notices, || ctx.db.pending_notices(
                login,
                now,
                marks.notices
            )),
            requests_at_login(ctx, login),
        );
        // Pending messages, oldest first, page by page.
        let mut after = 0;
        let mut next_page = Some(first_page);
        loop {
            let read = match next_page.take() {
                Some(page) => page,
                None => {
                    ctx.db
                        .pending_messages(login, after, marks.messages, PAGE)
                        .await
                }
            };
            let page = match read {
                Ok(v) => v,
                Err(e) => {
                    warn!("pending messages: {e}");
                    break;
                }
            };
            for m in &page {
                after = m.seq;
                self.out.push(&message_packet(ctx, m));
            }
            if self.flush().await.is_err() {
                self.closing = true;
                return;
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        // Read receipts stored while this user was offline.
        match receipts {
            Ok(receipts) if !receipts.is_empty() => {
                let mut seqs = Vec::with_capacity(receipts.len());
                for r in receipts {
                    seqs.push(r.seq);
                    let pkt = ReadReceipt {
                        id: r.message_id,
                        by: ctx.addr(&r.reader),
                        at: datetime(r.at),
                    };
                    self.out.push(&pkt.to_packet());
                }
                // Sent first, then recorded, and the login waits for the record: a receipt is
                // repeated only if the server stops in between, never to the next login (§5.6).
                if self.flush().await.is_err() {
                    self.closing = true;
                    return;
                }
                if let Err(e) = ctx.writer.write(WriteOp::DeleteReceipts(seqs)).await {
                    warn!("delivered receipts: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => warn!("pending receipts: {e}"),
        }
        // File offers made while offline.
        match offers {
            Ok(offers) => {
                for o in offers {
                    self.out.push(&request_packet(ctx, &o));
                }
            }
            Err(e) => warn!("pending offers: {e}"),
        }
        // File results (SEND-FILE-PROXY-OK / -REJECTED / -READY) stored for this user.
        match notices {
            Ok(notices) => {
                for n in notices {
                    self.out.push(&n.body.to_packet());
                }
            }
            Err(e) => warn!("pending notices: {e}"),
        }
        // Presence requests waiting for an answer (repeated at every login until answered).
        for p in presence_requests {
            self.out.push(&p);
        }
    }
}

/// `read()` when `wanted`, else nothing (known empty).
async fn when<T, F>(wanted: bool, read: impl FnOnce() -> F) -> Result<Vec<T>, crate::db::DbError>
where
    F: std::future::Future<Output = Result<Vec<T>, crate::db::DbError>>,
{
    if wanted {
        read().await
    } else {
        Ok(Vec::new())
    }
}
