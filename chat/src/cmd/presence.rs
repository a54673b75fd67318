//! Presence (PROTOCOL.md §7): when a user's first session logs in or the last one goes, every
//! online approved watcher (§7.1) gets `CONTACT-UPDATED` with `presence=`, and on going
//! offline also `UPDATE-LAST-SEEN`.

use crate::clock::datetime;
use crate::cmd::context::Ctx;
use crate::hub::encode;
use msim_shared::proto::{Body, ContactUpdate, ContactUpdated, Presence, UpdateLastSeen};
use tracing::warn;

/// Tells the watchers of `login` that it came online or went offline.
pub(crate) async fn announce(ctx: &Ctx<'_>, login: &str, online: bool) {
    // A newer session may have logged in meanwhile: never announce a stale "offline"; nor a
    // stale "online" (a cluster heartbeat's, queued while the user logged out: sent after the
    // logout's "offline" it would show the user online for good). Only this node's sessions
    // are asked: in a cluster the database already decided that no other node has one
    // (`cluster::nodes::session_closed`), and the mirror of the other nodes' sessions may lag
    // behind it; an "online" is only ever announced by the node holding the session.
    if online != ctx.hub.is_local(login) {
        return;
    }
    if let Some(fed) = ctx.federation {
        crate::federation::subscriptions::presence_changed(fed, ctx, login, online).await;
    }
    // Only approved watchers, not blocked, and not when the user shows presence to nobody.
    let watchers = match ctx.db.approved_watchers(login).await {
        Ok((_, vis)) if vis == "nobody" => return,
        Ok((w, _)) => w,
        Err(e) => {
            warn!("presence watchers: {e}");
            return;
        }
    };
    if watchers.iter().all(|o| !ctx.hub.may_reach(o)) {
        return;
    }
    let addr = ctx.addr(login);
    let (presence, at) = if online {
        (Presence::Online, None)
    } else {
        let last = match ctx.db.profile(login).await {
            Ok(Some(p)) => p.last_seen,
            _ => None,
        };
        let t = datetime(last.unwrap_or_else(|| ctx.now()));
        (Presence::LastSeen(t), Some(t))
    };
    let mut rec = ContactUpdate::new(addr.clone());
    rec.presence = Some(presence);
    let updated = ContactUpdated { updates: vec![rec] };
    let mut bytes = encode(&updated.to_packet()).to_vec();
    if let Some(at) = at {
        let seen = UpdateLastSeen { id: addr, at };
        bytes.extend_from_slice(seen.to_packet().to_wire().as_bytes());
    }
    let bytes = bytes::Bytes::from(bytes);
    for owner in watchers {
        ctx.hub.send(&owner, &bytes);
    }
}
