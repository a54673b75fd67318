//! Presence consent, last-seen visibility and blocking (PROTOCOL.md §7.1–§7.4).

use crate::clock::datetime;
use crate::cmd::{parse_target, Target};
use crate::db::{Outcome, PrivacyOp, PrivacyOutcome, WriteOp};
use crate::server::Shared;
use crate::session::Session;
use msim_shared::proto::{
    Block, BlockFailed, BlockFailure, BlockOk, Body, ContactUpdate, ContactUpdated,
    LastSeenVisibility, Presence, PresenceAnswerFailed, PresenceApproveOk, PresenceDenyOk,
    PresenceFailure, PresenceRequest, PrivacyFailed, PrivacySet, PrivacySetOk, PrivacySettings,
    Unblock, UnblockFailed, UnblockOk,
};
use msim_shared::Packet;
use tracing::warn;

/// The current presence of local user `subject` (None: never seen).
pub async fn current(sh: &Shared, subject: &str) -> Option<Presence> {
    if sh.hub.is_online(subject) {
        return Some(Presence::Online);
    }
    match sh.db.profile(subject).await {
        Ok(Some(p)) => p.last_seen.map(|at| Presence::LastSeen(datetime(at))),
        _ => None,
    }
}

/// Sends `viewer` one `CONTACT-UPDATED` record with `subject`'s presence.
fn push(sh: &Shared, subject: &str, viewer: &str, presence: Presence) {
    let mut rec = ContactUpdate::new(format!("{subject}@{}", sh.config.domain));
    rec.presence = Some(presence);
    let pkt = ContactUpdated { updates: vec![rec] };
    sh.hub.send_packet(viewer, &pkt.to_packet());
}

/// Tells `viewer` (when online and `subject` is in its contact list) `subject`'s presence as
/// it may now see it: the current one when visible, else `presence=` (hidden) — unless
/// `gained`, for a change that can only have made it visible (nothing to clear then).
pub async fn refresh(sh: &Shared, subject: &str, viewer: &str, gained: bool) {
    if !sh.hub.is_online(viewer) || !sh.db.has_contact(viewer, subject).await.unwrap_or(false) {
        return;
    }
    let visible = match sh.db.can_see_presence(subject, viewer).await {
        Ok(v) => v,
        Err(e) => return warn!("presence visibility: {e}"),
    };
    if !visible {
        if !gained {
            push(sh, subject, viewer, Presence::Hidden);
        }
        return;
    }
    if let Some(p) = current(sh, subject).await {
        push(sh, subject, viewer, p);
    }
}

/// `watcher` added local user `subject` as a contact: ask `subject` (§7.1).
pub async fn subscribe(sh: &Shared, watcher: &str, subject: &str) {
    let op = PrivacyOp::Subscribe {
        watcher: watcher.to_owned(),
        subject: subject.to_owned(),
        now: sh.config.clock.now_micros(),
        max_requests: sh.config.max_presence_requests as i64,
    };
    let (request, approved_back) = match sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::Subscribed {
            request,
            approved_back,
            ..
        })) => (request, approved_back),
        Ok(_) => return,
        Err(e) => return warn!("presence subscribe: {e}"),
    };
    // A blocked requester's request waits unseen (it shows again after an unblock).
    if request && !sh.blocks.is_blocked(subject, watcher) {
        let from = format!("{watcher}@{}", sh.config.domain);
        sh.hub
            .send_packet(subject, &PresenceRequest { from }.to_packet());
    }
    if approved_back {
        refresh(sh, watcher, subject, true).await;
    }
}

/// `watcher` removed `subject` from its contacts.
pub fn unsubscribe(sh: &Shared, watcher: &str, subject: &str) {
    sh.writer
        .write_detached(WriteOp::Privacy(PrivacyOp::Unsubscribe {
            watcher: watcher.to_owned(),
            subject: subject.to_owned(),
        }));
}

/// At login: every open presence request, after the stored backlog (§4.5).
pub async fn requests_at_login(s: &mut Session<'_>, login: &str) {
    match s.sh.db.presence_requests(login).await {
        Ok(from) => {
            for f in from {
                let pkt = PresenceRequest { from: s.addr(&f) };
                s.push(&pkt.to_packet());
            }
        }
        Err(e) => warn!("presence requests: {e}"),
    }
}

fn local(s: &Session<'_>, id: &str) -> Result<String, ()> {
    match parse_target(id, &s.sh.config.domain) {
        Some(Target::Local(l)) => Ok(l),
        _ => Err(()),
    }
}

/// `PRESENCE-APPROVE id=` / `PRESENCE-DENY id=`.
pub async fn answer(s: &mut Session<'_>, p: &Packet, id: String, login: &str, approve: bool) {
    let Ok(watcher) = local(s, &id) else {
        let f = PresenceAnswerFailed {
            id,
            reason: PresenceFailure::BadAddress,
        };
        return s.reply(p, f.to_packet());
    };
    let addr = s.addr(&watcher);
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
        now: s.sh.config.clock.now_micros(),
    };
    match s.sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::Answered { was_approved })) => {
            let ok = if approve {
                PresenceApproveOk { id: addr.clone() }.to_packet()
            } else {
                PresenceDenyOk { id: addr.clone() }.to_packet()
            };
            s.reply(p, ok);
            if approve != was_approved {
                let sh = s.sh.clone();
                refresh(&sh, login, &watcher, approve).await;
            }
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(PresenceFailure::NotFound)),
        Ok(_) | Err(_) => s.reply(p, fail(PresenceFailure::StorageError)),
    }
}

/// `BLOCK id=`.
pub async fn block(s: &mut Session<'_>, p: &Packet, r: Block, login: &str) {
    let fail = |id: &str, reason| {
        BlockFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let who = match parse_target(&r.id, &s.sh.config.domain) {
        None => return s.reply(p, fail(&r.id, BlockFailure::BadAddress)),
        Some(Target::Remote(a)) => return s.reply(p, fail(&a, BlockFailure::FederationDisabled)),
        Some(Target::Local(l)) => l,
    };
    let addr = s.addr(&who);
    if who == login {
        return s.reply(p, fail(&addr, BlockFailure::SelfBlock));
    }
    let sh = s.sh.clone();
    // Whether the blocked user saw this user's presence until now (then they are told it is
    // hidden, exactly as after a denial).
    let saw = sh.db.can_see_presence(login, &who).await.unwrap_or(false);
    let op = PrivacyOp::Block {
        owner: login.to_owned(),
        blocked: who.clone(),
        now: sh.config.clock.now_micros(),
        max: sh.config.max_blocks as i64,
    };
    match sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Done) | Ok(Outcome::Exists) => {
            sh.blocks.insert(login, &who);
            s.reply(p, BlockOk { id: addr }.to_packet());
            if saw {
                refresh(&sh, login, &who, false).await;
            }
        }
        Ok(Outcome::UnknownUser) => s.reply(p, fail(&addr, BlockFailure::UnknownUser)),
        Ok(Outcome::TooMany) => s.reply(p, fail(&addr, BlockFailure::TooManyBlocks)),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, BlockFailure::StorageError)),
    }
}

/// `UNBLOCK id=`.
pub async fn unblock(s: &mut Session<'_>, p: &Packet, r: Unblock, login: &str) {
    let fail = |id: &str, reason| {
        UnblockFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let Ok(who) = local(s, &r.id) else {
        return s.reply(p, fail(&r.id, BlockFailure::NotFound));
    };
    let addr = s.addr(&who);
    let sh = s.sh.clone();
    let op = PrivacyOp::Unblock {
        owner: login.to_owned(),
        blocked: who.clone(),
    };
    match sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Done) => {
            sh.blocks.remove(login, &who);
            s.reply(p, UnblockOk { id: addr }.to_packet());
            refresh(&sh, login, &who, true).await;
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(&addr, BlockFailure::NotFound)),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, BlockFailure::StorageError)),
    }
}

/// `PRIVACY-SET last-seen=`.
pub async fn set(s: &mut Session<'_>, p: &Packet, r: PrivacySet, login: &str) {
    if let LastSeenVisibility::Other(_) = r.last_seen {
        let e = msim_shared::proto::ErrorMalformed {
            reason: "bad-value".into(),
            detail: Some("last-seen".into()),
        };
        return s.reply(p, e.to_packet());
    }
    let sh = s.sh.clone();
    let op = PrivacyOp::SetVisibility {
        login: login.to_owned(),
        visibility: r.last_seen.as_str().to_owned(),
    };
    let old = match sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::OldVisibility(old))) => old,
        Ok(_) | Err(_) => {
            let f = PrivacyFailed {
                reason: PresenceFailure::StorageError,
            };
            return s.reply(p, f.to_packet());
        }
    };
    s.reply(
        p,
        PrivacySetOk {
            last_seen: r.last_seen.clone(),
        }
        .to_packet(),
    );
    // Approved watchers see a change only between `nobody` and the other two settings.
    if (old == "nobody") == (r.last_seen == LastSeenVisibility::Nobody) {
        return;
    }
    match sh.db.approved_watchers(login).await {
        Ok((watchers, _)) => {
            let gained = r.last_seen != LastSeenVisibility::Nobody;
            for w in watchers {
                refresh(&sh, login, &w, gained).await;
            }
        }
        Err(e) => warn!("presence watchers: {e}"),
    }
}

/// `PRIVACY-GET`.
pub async fn get(s: &mut Session<'_>, p: &Packet, login: &str) {
    let sh = s.sh.clone();
    let r = async {
        let vis = sh.db.visibility(login).await?;
        let blocked = sh.db.blocked_by(login).await?;
        Ok::<_, crate::db::DbError>((vis, blocked))
    };
    match r.await {
        Ok((vis, blocked)) => {
            let pkt = PrivacySettings {
                last_seen: LastSeenVisibility::parse(&vis),
                blocked: blocked.iter().map(|b| s.addr(b)).collect(),
            };
            s.reply(p, pkt.to_packet());
        }
        Err(e) => {
            warn!("privacy get: {e}");
            let f = PrivacyFailed {
                reason: PresenceFailure::StorageError,
            };
            s.reply(p, f.to_packet());
        }
    }
}
