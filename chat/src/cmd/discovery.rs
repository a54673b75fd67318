//! Account discovery (SECURITY.md, "Account discovery"): `unknown-user` / `unknown-recipient`
//! tell whether an account exists, so lookups that hit unknown users are rate limited per
//! account. Once an account has used up its budget, every lookup of a user who is not already
//! its contact is refused with `ERROR-RATE-LIMITED`, whether that user exists or not, so the
//! refusal itself reveals nothing.

use crate::cmd::context::Ctx;
use msim_shared::proto::{Body, ErrorRateLimited};
use msim_shared::Packet;
use tracing::warn;

/// Whether `login` may look up local user `target` now; the `ERROR-RATE-LIMITED` answer to
/// a `verb` request when not.
pub(crate) async fn check(ctx: &Ctx<'_>, verb: &str, login: &str, target: &str) -> Option<Packet> {
    let discovery = &ctx.limits.discovery;
    if target == login || discovery.unlimited() {
        return None;
    }
    let wait = discovery.wait(&login.to_owned(), ctx.now());
    if wait.is_zero() {
        return None;
    }
    // Contacts are known to exist: looking them up reveals nothing new.
    match ctx.db.has_contact(login, target).await {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => warn!("discovery: {e}"),
    }
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Some(
        ErrorRateLimited {
            verb: verb.to_owned(),
            retry_after: secs.max(1),
        }
        .to_packet(),
    )
}

/// A lookup by `login` hit an unknown user: it costs one token.
pub(crate) fn miss(ctx: &Ctx<'_>, login: &str) {
    ctx.limits.discovery.take(login.to_owned(), ctx.now());
}
