//! Subscription lifetimes (PROTOCOL.md §12.9). On the subject's side a remote watcher's
//! subscription lapses when its server has not renewed it within the lifetime (msim-chat:
//! 30 days): lapsed ones are no longer served, and the cluster leader's periodic job deletes
//! them (bounded per run), so the table holds only subscriptions someone still renews. On the
//! watcher's side a subscription is renewed at each login of the watcher's first session, and
//! for watchers who stay online, every quarter of the lifetime by this job on the node that
//! holds their sessions (`state=changed`: no state of the moment for a live subscription).

use super::subscriptions::{live_since, resubscribe_all};
use crate::cmd::context::Ctx;
use crate::server::Shared;
use tracing::{info, warn};

/// Most lapsed subscriptions deleted per run.
const SWEEP: i64 = 10_000;

/// One run of the job (every purge interval).
pub(crate) async fn tick(sh: &Shared) {
    let Some(fed) = sh.federation.as_deref() else {
        return;
    };
    let ctx = Ctx::new(sh);
    let now = ctx.now();
    if super::drain::may_drain(sh) {
        match sh
            .db
            .federation_subs_expire(live_since(fed, now), SWEEP)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(n, "federation: lapsed subscriptions forgotten"),
            Err(e) => warn!("federation subscription expiry: {e}"),
        }
    }
    let every = fed.config.subscription_lifetime / 4;
    for login in sh.hub.local_logins() {
        if fed.renewals.due(&login, every, now) {
            resubscribe_all(fed, &ctx, &login, false).await;
        }
    }
}
