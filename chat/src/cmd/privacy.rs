//! Presence consent, last-seen visibility and blocking (PROTOCOL.md §7.1–§7.4).

use crate::clock::datetime;
use crate::cmd::context::{Ctx, Me, Reply};
use crate::cmd::{parse_target, Target};
use crate::db::{Outcome, PrivacyOp, PrivacyOutcome, WriteOp};
use msim_shared::proto::{
    Block, BlockFailed, BlockFailure, BlockOk, Body, ContactUpdate, ContactUpdated,
    LastSeenVisibility, Presence, PresenceAnswerFailed, PresenceApproveOk, PresenceDenyOk,
    PresenceFailure, PresenceRequest, PrivacyFailed, PrivacySet, PrivacySetOk, PrivacySettings,
    Unblock, UnblockFailed, UnblockOk,
};
use msim_shared::Packet;
use tracing::warn;

/// The current presence of local user `subject` (None: never seen).
pub(crate) async fn current(ctx: &Ctx<'_>, subject: &str) -> Option<Presence> {
    if ctx.hub.is_online(subject) {
        return Some(Presence::Online);
    }
    match ctx.db.profile(subject).await {
        Ok(Some(p)) => p.last_seen.map(|at| Presence::LastSeen(datetime(at))),
        _ => None,
    }
}

/// Sends `viewer` one `CONTACT-UPDATED` record with `subject`'s presence.
fn push(ctx: &Ctx<'_>, subject: &str, viewer: &str, presence: Presence) {
    let mut rec = ContactUpdate::new(ctx.addr(subject));
    rec.presence = Some(presence);
    let pkt = ContactUpdated { updates: vec![rec] };
    ctx.hub.send_packet(viewer, &pkt.to_packet());
}

/// Tells `viewer` (when online and `subject` is in its contact list) `subject`'s presence as
/// it may now see it: the current one when visible, else `presence=` (hidden) — unless
/// `gained`, for a change that can only have made it visible (nothing to clear then).
pub(crate) async fn refresh(ctx: &Ctx<'_>, subject: &str, viewer: &str, gained: bool) {
    if !ctx.hub.may_reach(viewer) || !ctx.db.has_contact(viewer, subject).await.unwrap_or(false) {
        return;
    }
    let visible = match ctx.db.can_see_presence(subject, viewer).await {
        Ok(v) => v,
        Err(e) => return warn!("presence visibility: {e}"),
    };
    if !visible {
        if !gained {
            push(ctx, subject, viewer, Presence::Hidden);
        }
        return;
    }
    if let Some(p) = current(ctx, subject).await {
        push(ctx, subject, viewer, p);
    }
}

/// `watcher` added local user `subject` as a contact: ask `subject` (§7.1).
pub(crate) async fn subscribe(ctx: &Ctx<'_>, watcher: &str, subject: &str) {
    let op = PrivacyOp::Subscribe {
        watcher: watcher.to_owned(),
        subject: subject.to_owned(),
        now: ctx.now(),
        max_requests: ctx.config.max_presence_requests as i64,
    };
    let (request, approved_back) = match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::Subscribed {
            request,
            approved_back,
            ..
        })) => (request, approved_back),
        Ok(_) => return,
        Err(e) => return warn!("presence subscribe: {e}"),
    };
    // A blocked requester's request waits unseen (it shows again after an unblock).
    if request && !ctx.blocks.is_blocked(subject, watcher) {
        let from = ctx.addr(watcher);
        ctx.hub
            .send_packet(subject, &PresenceRequest { from }.to_packet());
    }
    if approved_back {
        refresh(ctx, watcher, subject, true).await;
    }
}

/// `watcher` removed `subject` from its contacts.
pub(crate) fn unsubscribe(ctx: &Ctx<'_>, watcher: &str, subject: &str) {
    ctx.writer
        .write_detached(WriteOp::Privacy(PrivacyOp::Unsubscribe {
            watcher: watcher.to_owned(),
            subject: subject.to_owned(),
        }));
}

/// At login: every open presence request, sent after the stored backlog (§4.5).
pub(crate) async fn requests_at_login(ctx: &Ctx<'_>, login: &str) -> Vec<Packet> {
    match ctx.db.presence_requests(login).await {
        Ok(from) => from
            .iter()
            .map(|f| PresenceRequest { from: ctx.addr(f) }.to_packet())
            .collect(),
        Err(e) => {
            warn!("presence requests: {e}");
            Vec::new()
        }
    }
}

fn local(ctx: &Ctx<'_>, id: &str) -> Result<String, ()> {
    match parse_target(id, &ctx.config.domain) {
        Some(Target::Local(l)) => Ok(l),
        _ => Err(()),
    }
}

/// `PRESENCE-APPROVE id=` / `PRESENCE-DENY id=`.
pub(crate) async fn answer(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, id: String, approve: bool) {
    let login = me.login;
    let Ok(watcher) = local(ctx, &id) else {
        let f = PresenceAnswerFailed {
            id,
            reason: PresenceFailure::BadAddress,
        };
        return reply.send(f.to_packet());
    };
    let addr = ctx.addr(&watcher);
    let fail = |reason| {
        PresenceAnswerFailed {
            id: addr.clone(),
            reason,
        }
        .to_packet()
    };
    let op = PrivacyOp::Answer {
        subject: login.to_owned(),
        watcher: watcher.clone(),
        approve,
        now: ctx.now(),
    };
    match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::Answered { was_approved })) => {
            let ok = if approve {
                PresenceApproveOk { id: addr.clone() }.to_packet()
            } else {
                PresenceDenyOk { id: addr.clone() }.to_packet()
            };
            reply.send(ok);
            if approve != was_approved {
                refresh(ctx, login, &watcher, approve).await;
            }
        }
        Ok(Outcome::NotFound) => reply.send(fail(PresenceFailure::NotFound)),
        Ok(_) | Err(_) => reply.send(fail(PresenceFailure::StorageError)),
    }
}

/// `BLOCK id=`.
pub(crate) async fn block(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: Block) {
    let login = me.login;
    let fail = |id: &str, reason| BlockFailed::new(id, reason).to_packet();
    let who = match parse_target(&r.id, &ctx.config.domain) {
        None => return reply.send(fail(&r.id, BlockFailure::BadAddress)),
        // A remote user is blocked by full address (nothing of theirs reaches this user: the
        // s2s path checks blocks like local delivery); only with federation on.
        Some(Target::Remote(a)) if ctx.federation.is_none() => {
            return reply.send(fail(&a, BlockFailure::FederationDisabled))
        }
        Some(Target::Remote(a)) => a,
        Some(Target::Local(l)) => l,
    };
    let addr = ctx.addr(&who);
    if who == login {
        return reply.send(fail(&addr, BlockFailure::SelfBlock));
    }
    // Whether the blocked user saw this user's presence until now (then they are told it is
    // hidden, exactly as after a denial).
    let saw = ctx.db.can_see_presence(login, &who).await.unwrap_or(false);
    let op = PrivacyOp::Block {
        owner: login.to_owned(),
        blocked: who.clone(),
        now: ctx.now(),
        max: ctx.config.max_blocks as i64,
    };
    match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Done) | Ok(Outcome::Exists) => {
            ctx.blocks.insert(login, &who);
            reply.send(BlockOk { id: addr }.to_packet());
            if saw {
                refresh(ctx, login, &who, false).await;
            }
            // A remote watcher subscribed on its server is told too (§12.9).
            if let Some(fed) = ctx.federation {
                let only = Some(who.as_str());
                crate::federation::subscriptions::refresh(fed, ctx, login, only, false).await;
            }
        }
        Ok(Outcome::UnknownUser) => reply.send(fail(&addr, BlockFailure::UnknownUser)),
        Ok(Outcome::TooMany) => reply.send(fail(&addr, BlockFailure::TooManyBlocks)),
        Ok(_) | Err(_) => reply.send(fail(&addr, BlockFailure::StorageError)),
    }
}

/// `UNBLOCK id=`.
pub(crate) async fn unblock(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: Unblock) {
    let login = me.login;
    let fail = |id: &str, reason| UnblockFailed::new(id, reason).to_packet();
    let who = match parse_target(&r.id, &ctx.config.domain) {
        Some(Target::Local(l)) => l,
        Some(Target::Remote(a)) => a,
        None => return reply.send(fail(&r.id, BlockFailure::NotFound)),
    };
    let addr = ctx.addr(&who);
    let op = PrivacyOp::Unblock {
        owner: login.to_owned(),
        blocked: who.clone(),
    };
    match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Done) => {
            ctx.blocks.remove(login, &who);
            reply.send(UnblockOk { id: addr }.to_packet());
            refresh(ctx, login, &who, true).await;
            if let Some(fed) = ctx.federation {
                let only = Some(who.as_str());
                crate::federation::subscriptions::refresh(fed, ctx, login, only, true).await;
            }
        }
        Ok(Outcome::NotFound) => reply.send(fail(&addr, BlockFailure::NotFound)),
        Ok(_) | Err(_) => reply.send(fail(&addr, BlockFailure::StorageError)),
    }
}

/// `PRIVACY-SET last-seen=`.
pub(crate) async fn set(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: PrivacySet) {
    let login = me.login;
    if let LastSeenVisibility::Other(_) = r.last_seen {
        let e = msim_shared::proto::ErrorMalformed {
            reason: "bad-value".into(),
            detail: Some("last-seen".into()),
        };
        return reply.send(e.to_packet());
    }
    let op = PrivacyOp::SetVisibility {
        login: login.to_owned(),
        visibility: r.last_seen.as_str().to_owned(),
    };
    let old = match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::OldVisibility(old))) => old,
        Ok(_) | Err(_) => {
            let f = PrivacyFailed {
                reason: PresenceFailure::StorageError,
            };
            return reply.send(f.to_packet());
        }
    };
    reply.send(
        PrivacySetOk {
            last_seen: r.last_seen.clone(),
        }
        .to_packet(),
    );
    // Approved watchers see a change only between `nobody` and the other two settings.
    if (old == "nobody") == (r.last_seen == LastSeenVisibility::Nobody) {
        return;
    }
    if let Some(fed) = ctx.federation {
        let gained = r.last_seen != LastSeenVisibility::Nobody;
        crate::federation::subscriptions::refresh(fed, ctx, login, None, gained).await;
    }
    match ctx.db.approved_watchers(login).await {
        Ok((watchers, _)) => {
            let gained = r.last_seen != LastSeenVisibility::Nobody;
            for w in watchers {
                refresh(ctx, login, &w, gained).await;
            }
        }
        Err(e) => warn!("presence watchers: {e}"),
    }
}

/// `PRIVACY-GET`.
pub(crate) async fn get(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>) {
    let login = me.login;
    let r = async {
        let vis = ctx.db.visibility(login).await?;
        let blocked = ctx.db.blocked_by(login).await?;
        Ok::<_, crate::db::DbError>((vis, blocked))
    };
    match r.await {
        Ok((vis, blocked)) => {
            let pkt = PrivacySettings {
                last_seen: LastSeenVisibility::parse(&vis),
                blocked: blocked.iter().map(|b| ctx.addr(b)).collect(),
            };
            reply.send(pkt.to_packet());
        }
        Err(e) => {
            warn!("privacy get: {e}");
            let f = PrivacyFailed {
                reason: PresenceFailure::StorageError,
            };
            reply.send(f.to_packet());
        }
    }
}
