//! Contacts (PROTOCOL.md §8). Changes reach the owner's other sessions as `CONTACT-UPDATED`.

use crate::clock::datetime;
use crate::cmd::context::{Ctx, Me, Reply};
use crate::cmd::{discovery, has_control, parse_target, Target};
use crate::db::{ContactRow, Outcome, WriteOp};
use crate::hub::encode;
use msim_shared::proto::{
    Body, Contact, ContactFailure, ContactUpdate, ContactUpdated, ContactsAdd, ContactsAddFailed,
    ContactsAddOk, ContactsChange, ContactsChangeFailed, ContactsChangeOk, ContactsDelete,
    ContactsDeleteFailed, ContactsDeleteOk, ContactsGetFailed, ContactsGetFailure, ContactsList,
    Presence,
};
use tracing::warn;

/// Longest contact or profile name (characters).
pub(crate) const MAX_NAME: usize = 128;

/// Whether a name is acceptable (non-empty, bounded, no control characters).
pub(crate) fn valid_name(n: &str) -> bool {
    !n.trim().is_empty() && n.chars().count() <= MAX_NAME && !has_control(n)
}

/// Whether a group path is acceptable: the shared rule (`a/b`, non-empty segments, at most
/// 128 characters) and no control characters.
pub(crate) fn valid_group(g: &str) -> bool {
    msim_shared::proto::is_valid_group(g) && !has_control(g)
}

/// The presence of a local user: online, or last seen (None if never seen).
pub(crate) fn presence(ctx: &Ctx<'_>, login: &str, last_seen: Option<i64>) -> Option<Presence> {
    if ctx.hub.is_online(login) {
        Some(Presence::Online)
    } else {
        last_seen.map(|at| Presence::LastSeen(datetime(at)))
    }
}

/// `visible`: whether the owner may see this contact's presence (§7.2).
fn record(ctx: &Ctx<'_>, row: &ContactRow, visible: bool) -> Contact {
    let login_part = row.contact.split('@').next().unwrap_or(&row.contact);
    let name = row
        .name
        .clone()
        .or_else(|| row.profile_name.clone().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| login_part.to_owned());
    let presence = row
        .contact_local
        .as_deref()
        .filter(|_| visible)
        .and_then(|l| presence(ctx, l, row.last_seen));
    Contact {
        id: row.contact.clone(),
        name,
        group: row.group.clone(),
        note: row.note.clone().filter(|n| !n.is_empty()),
        presence,
    }
}

fn to_other_sessions(ctx: &Ctx<'_>, me: Me<'_>, rec: ContactUpdate) {
    let pkt = ContactUpdated { updates: vec![rec] };
    let bytes = encode(&pkt.to_packet());
    ctx.hub.send_except(me.login, Some(me.session), &bytes);
}

/// `CONTACTS-GET`.
pub(crate) async fn get(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>) {
    let login = me.login;
    let rows = match ctx.db.contacts(login).await {
        Ok(rows) => ctx.db.visible_contacts(login).await.map(|v| (rows, v)),
        Err(e) => Err(e),
    };
    match rows {
        Ok((rows, visible)) => {
            let contacts = rows
                .iter()
                .map(|r| {
                    let v = r
                        .contact_local
                        .as_ref()
                        .is_some_and(|l| visible.contains(l));
                    record(ctx, r, v)
                })
                .collect();
            reply.send(ContactsList { contacts }.to_packet());
        }
        Err(e) => {
            // Never an empty list in place of the real one: the client would show it.
            warn!("contacts: {e}");
            let failed = ContactsGetFailed {
                reason: ContactsGetFailure::StorageError,
            };
            reply.send(failed.to_packet());
        }
    }
}

/// The contact `id` names and its canonical address; `None` when it is not an address.
fn address(ctx: &Ctx<'_>, id: &str) -> Option<(Target, String)> {
    let target = parse_target(id, &ctx.config.domain)?;
    let addr = match &target {
        Target::Local(l) => ctx.addr(l),
        Target::Remote(a) => a.clone(),
    };
    Some((target, addr))
}

/// `CONTACTS-ADD id= [name=] [group=]`.
pub(crate) async fn add(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: ContactsAdd) {
    let login = me.login;
    let ContactsAdd { id, name, group } = r;
    let fail = |id: &str, reason| ContactsAddFailed::new(id, reason).to_packet();
    let Some((target, addr)) = address(ctx, &id) else {
        return reply.send(fail(&id, ContactFailure::BadAddress));
    };
    if target == Target::Local(login.to_owned()) {
        return reply.send(fail(&addr, ContactFailure::SelfContact));
    }
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return reply.send(fail(&addr, ContactFailure::BadName));
    }
    let group = group.filter(|g| !g.is_empty());
    if group.as_deref().is_some_and(|g| !valid_group(g)) {
        return reply.send(fail(&addr, ContactFailure::BadGroup));
    }
    if let (Target::Remote(a), Some(fed)) = (&target, ctx.federation) {
        // The remote server says whether the account exists (PROTOCOL.md §12.1); only a
        // definite "no" refuses, an unreachable server does not.
        use crate::federation::hooks::{remote_profile, RemoteProfile};
        if let Some(refused) = discovery::check(ctx, reply.verb(), login, a).await {
            return reply.send(refused);
        }
        if let RemoteProfile::Unknown = remote_profile(fed, ctx, me, a).await {
            discovery::miss(ctx, login);
            return reply.send(fail(&addr, ContactFailure::UnknownUser));
        }
    }
    let local = match &target {
        Target::Local(l) => Some(l.clone()),
        Target::Remote(_) => None,
    };
    if let Some(l) = &local {
        if let Some(refused) = discovery::check(ctx, reply.verb(), login, l).await {
            return reply.send(refused);
        }
    }
    let op = WriteOp::AddContact {
        owner: login.to_owned(),
        contact: addr.clone(),
        contact_local: local.clone(),
        name: name.clone(),
        group: group.clone(),
        max: ctx.config.max_contacts as i64,
    };
    match ctx.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsAddOk { id: addr.clone() };
            reply.send(ok.to_packet());
            if let (Target::Remote(a), Some(fed)) = (&target, ctx.federation) {
                use crate::federation::subscriptions as subs;
                subs::subscribe(fed, ctx, login, a).await;
                // Adding a remote user approves them (§12.9).
                subs::refresh(fed, ctx, login, Some(a), true).await;
            }
            let mut visible = false;
            if let Some(l) = &local {
                crate::cmd::privacy::subscribe(ctx, login, l).await;
                visible = ctx.db.can_see_presence(l, login).await.unwrap_or(false);
            }
            let profile = match &local {
                Some(l) => ctx.db.profile(l).await.ok().flatten(),
                None => None,
            };
            let row = ContactRow {
                contact: addr,
                contact_local: local,
                name,
                group,
                profile_name: profile.as_ref().map(|p| p.name.clone()),
                note: profile.as_ref().map(|p| p.note.clone()),
                last_seen: profile.and_then(|p| p.last_seen),
            };
            let c = record(ctx, &row, visible);
            let rec = ContactUpdate {
                id: c.id,
                name: Some(c.name),
                group: c.group,
                note: c.note,
                presence: c.presence,
                deleted: false,
            };
            to_other_sessions(ctx, me, rec);
        }
        Ok(Outcome::UnknownUser) => {
            discovery::miss(ctx, login);
            reply.send(fail(&addr, ContactFailure::UnknownUser));
        }
        Ok(Outcome::Exists) => reply.send(fail(&addr, ContactFailure::AlreadyExists)),
        Ok(Outcome::TooMany) => reply.send(fail(&addr, ContactFailure::TooManyContacts)),
        Ok(_) | Err(_) => reply.send(fail(&addr, ContactFailure::StorageError)),
    }
}

/// `CONTACTS-CHANGE id= [name=] [group=]`.
pub(crate) async fn change(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: ContactsChange) {
    let login = me.login;
    let ContactsChange { id, name, group } = r;
    let fail = |id: &str, reason| ContactsChangeFailed::new(id, reason).to_packet();
    let Some((_, addr)) = address(ctx, &id) else {
        return reply.send(fail(&id, ContactFailure::NotFound));
    };
    let group = group.map(|g| Some(g).filter(|g| !g.is_empty()));
    if name.is_none() && group.is_none() {
        return reply.send(fail(&addr, ContactFailure::NothingToChange));
    }
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return reply.send(fail(&addr, ContactFailure::BadName));
    }
    if let Some(Some(g)) = &group {
        if !valid_group(g) {
            return reply.send(fail(&addr, ContactFailure::BadGroup));
        }
    }
    let op = WriteOp::ChangeContact {
        owner: login.to_owned(),
        contact: addr.clone(),
        name: name.clone(),
        group: group.clone(),
    };
    match ctx.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsChangeOk { id: addr.clone() };
            reply.send(ok.to_packet());
            let mut rec = ContactUpdate::new(addr);
            rec.name = name;
            rec.group = group.map(Option::unwrap_or_default);
            to_other_sessions(ctx, me, rec);
        }
        Ok(Outcome::NotFound) => reply.send(fail(&addr, ContactFailure::NotFound)),
        Ok(_) | Err(_) => reply.send(fail(&addr, ContactFailure::StorageError)),
    }
}

/// `CONTACTS-DELETE id=`.
pub(crate) async fn delete(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: ContactsDelete) {
    let login = me.login;
    let id = r.id;
    let fail = |id: &str, reason| ContactsDeleteFailed::new(id, reason).to_packet();
    let Some((target, addr)) = address(ctx, &id) else {
        return reply.send(fail(&id, ContactFailure::NotFound));
    };
    let op = WriteOp::DeleteContact {
        owner: login.to_owned(),
        contact: addr.clone(),
    };
    match ctx.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsDeleteOk { id: addr.clone() };
            reply.send(ok.to_packet());
            match (&target, ctx.federation) {
                (Target::Local(l), _) => crate::cmd::privacy::unsubscribe(ctx, login, l),
                (Target::Remote(a), Some(fed)) => {
                    use crate::federation::subscriptions as subs;
                    subs::unsubscribe(fed, ctx, login, a).await;
                    subs::refresh(fed, ctx, login, Some(a), false).await;
                }
                (Target::Remote(_), None) => {}
            }
            let mut rec = ContactUpdate::new(addr);
            rec.deleted = true;
            to_other_sessions(ctx, me, rec);
        }
        Ok(Outcome::NotFound) => reply.send(fail(&addr, ContactFailure::NotFound)),
        Ok(_) | Err(_) => reply.send(fail(&addr, ContactFailure::StorageError)),
    }
}
