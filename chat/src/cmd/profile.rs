//! Profile (PROTOCOL.md §9). A change reaches every online user who has this user as a contact
//! as `CONTACT-UPDATED` with only the changed fields.

use crate::clock::datetime;
use crate::cmd::contacts::valid_name;
use crate::cmd::context::{Ctx, Me, Reply};
use crate::cmd::{discovery, parse_target, Target};
use crate::db::{Outcome, WriteOp};
use msim_shared::proto::{
    Body, ContactUpdate, ContactUpdated, Presence, Profile, ProfileFailure, ProfileGet,
    ProfileGetFailed, ProfileGetFailure, ProfileUpdate, ProfileUpdateFailed, ProfileUpdateOk,
};
use tracing::warn;

/// Longest profile note (characters).
pub(crate) const MAX_NOTE: usize = 1024;

/// `PROFILE-UPDATE [name=] [note=]`.
pub(crate) async fn update(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: ProfileUpdate) {
    let login = me.login;
    let fail = |reason: ProfileFailure| ProfileUpdateFailed { reason }.to_packet();
    let ProfileUpdate { name, note } = r;
    if name.is_none() && note.is_none() {
        return reply.send(fail(ProfileFailure::NothingToChange));
    }
    // An empty name clears it (contacts then show the login).
    if name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && !valid_name(n))
    {
        return reply.send(fail(ProfileFailure::BadName));
    }
    if note.as_deref().is_some_and(|n| {
        n.chars().count() > MAX_NOTE || n.chars().any(|c| c.is_control() && c != '\n')
    }) {
        return reply.send(fail(ProfileFailure::NoteTooLong));
    }
    let op = WriteOp::UpdateProfile {
        login: login.to_owned(),
        name: name.clone(),
        note: note.clone(),
    };
    let old = match ctx.writer.write(op).await {
        Ok(Outcome::OldProfile(old)) => old,
        Ok(_) | Err(_) => return reply.send(fail(ProfileFailure::StorageError)),
    };
    let name_changed = name.as_ref().filter(|n| **n != old.name);
    let note_changed = note.as_ref().filter(|n| **n != old.note);
    // The pushes go out (and remote watchers' items are queued) before the answer: a
    // message the user sends next must not overtake the change it follows.
    push_change(ctx, login, name_changed, note_changed).await;
    reply.send(ProfileUpdateOk {}.to_packet());
}

/// Tells `login`'s watchers, local and remote, what changed in its profile.
async fn push_change(
    ctx: &Ctx<'_>,
    login: &str,
    name_changed: Option<&String>,
    note_changed: Option<&String>,
) {
    if name_changed.is_none() && note_changed.is_none() {
        return;
    }
    if let Some(fed) = ctx.federation {
        use crate::federation::subscriptions::profile_changed;
        profile_changed(fed, ctx, login, name_changed, note_changed).await;
    }
    let watchers = match ctx.db.watchers(login).await {
        Ok(w) => w,
        Err(e) => {
            warn!("profile watchers: {e}");
            return;
        }
    };
    let addr = ctx.addr(login);
    for (owner, defaulted) in watchers {
        // Users this user blocked get nothing from them.
        if !ctx.hub.may_reach(&owner) || ctx.blocks.is_blocked(login, &owner) {
            continue;
        }
        let mut rec = ContactUpdate::new(addr.clone());
        if let Some(n) = name_changed.filter(|_| defaulted) {
            rec.name = Some(if n.is_empty() { login } else { n.as_str() }.to_owned());
        }
        rec.note = note_changed.cloned();
        if rec.name.is_some() || rec.note.is_some() {
            let pkt = ContactUpdated { updates: vec![rec] };
            ctx.hub.send_packet(&owner, &pkt.to_packet());
        }
    }
}

/// `PROFILE-GET [id=]`.
pub(crate) async fn get(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: ProfileGet) {
    let login = me.login;
    let domain = ctx.config.domain.clone();
    let raw = r.id.unwrap_or_else(|| login.to_owned());
    let fail = |reason: ProfileGetFailure| {
        ProfileGetFailed {
            id: raw.clone(),
            reason,
        }
        .to_packet()
    };
    let who = match parse_target(&raw, &domain) {
        None => return reply.send(fail(ProfileGetFailure::BadAddress)),
        Some(Target::Remote(addr)) => {
            use crate::federation::hooks::{remote_profile, RemoteProfile};
            let Some(fed) = ctx.federation else {
                return reply.send(fail(ProfileGetFailure::FederationDisabled));
            };
            if let Some(refused) = discovery::check(ctx, reply.verb(), login, &addr).await {
                return reply.send(refused);
            }
            return reply.send(match remote_profile(fed, ctx, me, &addr).await {
                RemoteProfile::Found { name, note } => Profile {
                    id: addr,
                    name,
                    note: note.unwrap_or_default(),
                    presence: None,
                }
                .to_packet(),
                RemoteProfile::Unknown => {
                    discovery::miss(ctx, login);
                    fail(ProfileGetFailure::UnknownUser)
                }
                RemoteProfile::NoAnswer(why) => fail(ProfileGetFailure::Other(why.into())),
            });
        }
        Some(Target::Local(l)) => l,
    };
    if let Some(refused) = discovery::check(ctx, reply.verb(), login, &who).await {
        return reply.send(refused);
    }
    match ctx.db.profile(&who).await {
        Ok(Some(prof)) => {
            // Presence only for oneself and for viewers the user lets see it (§7.2).
            let visible =
                who == login || ctx.db.can_see_presence(&who, login).await.unwrap_or(false);
            let presence = if !visible {
                None
            } else if ctx.hub.is_online(&who) {
                Some(Presence::Online)
            } else {
                prof.last_seen.map(|at| Presence::LastSeen(datetime(at)))
            };
            let pkt = Profile {
                id: ctx.addr(&who),
                name: prof.name,
                note: prof.note,
                presence,
            };
            reply.send(pkt.to_packet());
        }
        Ok(None) => {
            discovery::miss(ctx, login);
            reply.send(fail(ProfileGetFailure::UnknownUser));
        }
        Err(e) => {
            warn!("profile get: {e}");
            reply.send(fail(ProfileGetFailure::StorageError));
        }
    }
}
