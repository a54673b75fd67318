//! Contacts (PROTOCOL.md §8). Changes reach the owner's other sessions as `CONTACT-UPDATED`.

use crate::clock::datetime;
use crate::cmd::{discovery, has_control, parse_target, Target};
use crate::db::{ContactRow, Outcome, WriteOp};
use crate::hub::encode;
use crate::session::Session;
use msim_shared::proto::{
    Body, Contact, ContactFailure, ContactUpdate, ContactUpdated, ContactsAdd, ContactsAddFailed,
    ContactsAddOk, ContactsChange, ContactsChangeFailed, ContactsChangeOk, ContactsDelete,
    ContactsDeleteFailed, ContactsDeleteOk, ContactsGetFailed, ContactsGetFailure, ContactsList,
    Presence,
};
use msim_shared::Packet;
use tracing::warn;

/// Longest contact or profile name (characters).
pub const MAX_NAME: usize = 128;

/// Whether a name is acceptable (non-empty, bounded, no control characters).
pub fn valid_name(n: &str) -> bool {
    !n.trim().is_empty() && n.chars().count() <= MAX_NAME && !has_control(n)
}

/// Whether a group path is acceptable: the shared rule (`a/b`, non-empty segments, at most
/// 128 characters) and no control characters.
pub fn valid_group(g: &str) -> bool {
    msim_shared::proto::is_valid_group(g) && !has_control(g)
}

/// The presence of a local user: online, or last seen (None if never seen).
pub fn presence(s: &Session<'_>, login: &str, last_seen: Option<i64>) -> Option<Presence> {
    if s.sh.hub.is_online(login) {
        Some(Presence::Online)
    } else {
        last_seen.map(|at| Presence::LastSeen(datetime(at)))
    }
}

/// `visible`: whether the owner may see this contact's presence (§7.2).
fn record(s: &Session<'_>, row: &ContactRow, visible: bool) -> Contact {
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
        .and_then(|l| presence(s, l, row.last_seen));
    Contact {
        id: row.contact.clone(),
        name,
        group: row.group.clone(),
        note: row.note.clone().filter(|n| !n.is_empty()),
        presence,
    }
}

fn to_other_sessions(s: &Session<'_>, login: &str, rec: ContactUpdate) {
    let pkt = ContactUpdated { updates: vec![rec] };
    let bytes = encode(&pkt.to_packet());
    s.sh.hub.send_except(login, s.session_id(), &bytes);
}

/// `CONTACTS-GET`.
pub async fn get(s: &mut Session<'_>, p: &Packet, login: &str) {
    let rows = match s.sh.db.contacts(login).await {
        Ok(rows) => s.sh.db.visible_contacts(login).await.map(|v| (rows, v)),
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
                    record(s, r, v)
                })
                .collect();
            s.reply(p, ContactsList { contacts }.to_packet());
        }
        Err(e) => {
            // Never an empty list in place of the real one: the client would show it.
            warn!("contacts: {e}");
            let failed = ContactsGetFailed {
                reason: ContactsGetFailure::StorageError,
            };
            s.reply(p, failed.to_packet());
        }
    }
}

fn canonical(t: &Target, domain: &str) -> String {
    match t {
        Target::Local(l) => format!("{l}@{domain}"),
        Target::Remote(a) => a.clone(),
    }
}

/// `CONTACTS-ADD id= [name=] [group=]`.
pub async fn add(s: &mut Session<'_>, p: &Packet, r: ContactsAdd, login: &str) {
    let ContactsAdd { id, name, group } = r;
    let fail = |id: &str, reason: ContactFailure| {
        ContactsAddFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(&id, &domain) else {
        return s.reply(p, fail(&id, ContactFailure::BadAddress));
    };
    let addr = canonical(&target, &domain);
    if target == Target::Local(login.to_owned()) {
        return s.reply(p, fail(&addr, ContactFailure::SelfContact));
    }
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return s.reply(p, fail(&addr, ContactFailure::BadName));
    }
    let group = group.filter(|g| !g.is_empty());
    if group.as_deref().is_some_and(|g| !valid_group(g)) {
        return s.reply(p, fail(&addr, ContactFailure::BadGroup));
    }
    let local = match &target {
        Target::Local(l) => Some(l.clone()),
        Target::Remote(_) => None,
    };
    if let Some(l) = &local {
        if let Some(refused) = discovery::check(s, p, login, l).await {
            return s.reply(p, refused);
        }
    }
    let op = WriteOp::AddContact {
        owner: login.to_owned(),
        contact: addr.clone(),
        contact_local: local.clone(),
        name: name.clone(),
        group: group.clone(),
        max: s.sh.config.max_contacts as i64,
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsAddOk { id: addr.clone() };
            s.reply(p, ok.to_packet());
            let mut visible = false;
            if let Some(l) = &local {
                let sh = s.sh.clone();
                crate::cmd::privacy::subscribe(&sh, login, l).await;
                visible = sh.db.can_see_presence(l, login).await.unwrap_or(false);
            }
            let profile = match &local {
                Some(l) => s.sh.db.profile(l).await.ok().flatten(),
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
            let c = record(s, &row, visible);
            let rec = ContactUpdate {
                id: c.id,
                name: Some(c.name),
                group: c.group,
                note: c.note,
                presence: c.presence,
                deleted: false,
            };
            to_other_sessions(s, login, rec);
        }
        Ok(Outcome::UnknownUser) => {
            discovery::miss(s, login);
            s.reply(p, fail(&addr, ContactFailure::UnknownUser));
        }
        Ok(Outcome::Exists) => s.reply(p, fail(&addr, ContactFailure::AlreadyExists)),
        Ok(Outcome::TooMany) => s.reply(p, fail(&addr, ContactFailure::TooManyContacts)),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, ContactFailure::StorageError)),
    }
}

/// `CONTACTS-CHANGE id= [name=] [group=]`.
pub async fn change(s: &mut Session<'_>, p: &Packet, r: ContactsChange, login: &str) {
    let ContactsChange { id, name, group } = r;
    let fail = |id: &str, reason: ContactFailure| {
        ContactsChangeFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(&id, &domain) else {
        return s.reply(p, fail(&id, ContactFailure::NotFound));
    };
    let addr = canonical(&target, &domain);
    let group = group.map(|g| Some(g).filter(|g| !g.is_empty()));
    if name.is_none() && group.is_none() {
        return s.reply(p, fail(&addr, ContactFailure::NothingToChange));
    }
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return s.reply(p, fail(&addr, ContactFailure::BadName));
    }
    if let Some(Some(g)) = &group {
        if !valid_group(g) {
            return s.reply(p, fail(&addr, ContactFailure::BadGroup));
        }
    }
    let op = WriteOp::ChangeContact {
        owner: login.to_owned(),
        contact: addr.clone(),
        name: name.clone(),
        group: group.clone(),
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsChangeOk { id: addr.clone() };
            s.reply(p, ok.to_packet());
            let mut rec = ContactUpdate::new(addr);
            rec.name = name;
            rec.group = group.map(Option::unwrap_or_default);
            to_other_sessions(s, login, rec);
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(&addr, ContactFailure::NotFound)),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, ContactFailure::StorageError)),
    }
}

/// `CONTACTS-DELETE id=`.
pub async fn delete(s: &mut Session<'_>, p: &Packet, r: ContactsDelete, login: &str) {
    let id = r.id;
    let fail = |id: &str, reason: ContactFailure| {
        ContactsDeleteFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(&id, &domain) else {
        return s.reply(p, fail(&id, ContactFailure::NotFound));
    };
    let addr = canonical(&target, &domain);
    let op = WriteOp::DeleteContact {
        owner: login.to_owned(),
        contact: addr.clone(),
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Done) => {
            let ok = ContactsDeleteOk { id: addr.clone() };
            s.reply(p, ok.to_packet());
            if let Target::Local(l) = &target {
                crate::cmd::privacy::unsubscribe(&s.sh, login, l);
            }
            let mut rec = ContactUpdate::new(addr);
            rec.deleted = true;
            to_other_sessions(s, login, rec);
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(&addr, ContactFailure::NotFound)),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, ContactFailure::StorageError)),
    }
}
