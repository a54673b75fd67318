//! Periodic jobs: the offer-expiry sweep and the message retention purge. Each runs on its
//! own interval until the server's stop token is cancelled.

use crate::cmd::context::Ctx;
use crate::cmd::notices::{notify, Note};
use crate::db::{NoticeBody, OfferState, Outcome, WriteOp};
use crate::server::Shared;
use msim_shared::proto::FileRejection;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Runs `step` every `interval` until `stop` is cancelled (a late tick is delayed, not
/// bunched up).
async fn every<F, Fut>(interval: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => step().await,
        }
    }
}

/// Whether this node runs the periodic jobs now: always on one node; in a cluster only on
/// the leader, so they run once per cluster.
fn runs_jobs(sh: &Shared) -> bool {
    sh.cluster.as_ref().is_none_or(|c| c.is_leader())
}

/// The offer-expiry job: every `offer_sweep_interval`, [`sweep`].
pub(crate) async fn sweep_loop(sh: Arc<Shared>, stop: CancellationToken) {
    every(sh.config.offer_sweep_interval, stop, || async {
        if runs_jobs(&sh) {
            sweep(&sh).await
        }
    })
    .await
}

/// The retention job: every `purge_interval`, [`purge`] until nothing is left to do.
pub(crate) async fn purge_loop(sh: Arc<Shared>, stop: CancellationToken) {
    every(sh.config.purge_interval, stop, || async {
        // Bounded steps; other writes get their turn in between.
        while runs_jobs(&sh) && purge(&sh).await {
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// Expires unanswered offers and tells both sides.
async fn sweep(sh: &Shared) {
    let ctx = Ctx::new(sh);
    let now = sh.config.clock.now_micros();
    match sh.writer.write(WriteOp::ExpireOffers { now }).await {
        Ok(Outcome::Expired(offers)) => {
            let expires = now + sh.config.offer_ttl.as_micros() as i64;
            for o in offers {
                info!(transfer = %o.id, "offer expired");
                let result = NoticeBody::rejected(&o.id, FileRejection::Expired);
                let pkt = result.to_packet();
                // The recipient's login backlog no longer lists the offer; only the sender
                // needs the result stored (stored before the recipient is told).
                // A remote sender's server expires its own copy of the offer (§12.10).
                if !o.sender.contains('@') {
                    let note = Note::new(o.sender.clone(), &o.id, result);
                    notify(&ctx, expires, vec![note]).await;
                }
                // A hidden offer (blocked sender) was never shown to its recipient.
                if o.state != OfferState::Hidden {
                    sh.hub.send_packet(&o.recipient, &pkt);
                }
            }
        }
        Ok(_) => {}
        Err(e) => warn!("offer sweep: {e}"),
    }
}

/// One retention step (PROTOCOL.md §5.7): expires pending messages past `message_ttl`
/// (their senders get `MESSAGE-SEND-FAILED reason=expired`, live and at their next logins
/// until `receipt_retention` has passed) and forgets delivered messages and receipts older
/// than `receipt_retention`. Returns whether more is left to do.
async fn purge(sh: &Shared) -> bool {
    let c = &sh.config;
    let now = c.clock.now_micros();
    let op = WriteOp::Purge {
        expire_before: now.saturating_sub(c.message_ttl.as_micros() as i64),
        forget_before: now.saturating_sub(c.receipt_retention.as_micros() as i64),
        limit: i64::from(c.purge_batch.max(1)),
    };
    let purged = match sh.writer.write(op).await {
        Ok(Outcome::Purged(p)) => p,
        Ok(_) => return false,
        Err(e) => {
            warn!("message retention: {e}");
            return false;
        }
    };
    if purged.forgotten > 0 || !purged.expired.is_empty() {
        info!(
            expired = purged.expired.len(),
            forgotten = purged.forgotten,
            "message retention"
        );
    }
    if !purged.expired.is_empty() {
        tell_expired(sh, purged.expired, now).await;
    }
    purged.more
}

/// Tells senders that their messages expired: stored (one write for the whole step) for their
/// logins until the receipt retention has passed, and pushed to their live sessions.
async fn tell_expired(sh: &Shared, expired: Vec<(String, String)>, now: i64) {
    let expires = now.saturating_add(sh.config.receipt_retention.as_micros() as i64);
    let notes = expired
        .into_iter()
        .map(|(id, sender)| Note::new(sender, &id, NoticeBody::expired_message(&id)))
        .collect();
    notify(&Ctx::new(sh), expires, notes).await;
}
