//! Contacts (PROTOCOL.md §8). Changes reach the owner's other sessions as `CONTACT-UPDATED`.

use crate::cmd::presence::presence_of;
use crate::cmd::{has_control, parse_target, Target};
use crate::db::{ContactRow, Outcome, WriteOp};
use crate::hub::encode;
use crate::session::Session;
use msim_shared::proto::{Body, ContactsGetFailed, ContactsGetFailure};
use msim_shared::{Fields, Packet};
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

fn record(s: &Session<'_>, row: &ContactRow) -> Fields {
    let login_part = row.contact.split('@').next().unwrap_or(&row.contact);
    let name = row
        .name
        .clone()
        .or_else(|| row.profile_name.clone().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| login_part.to_owned());
    let presence = row
        .contact_local
        .as_deref()
        .and_then(|l| presence_of(&s.sh, l, row.last_seen));
    let mut f = Fields::new()
        .with("id", row.contact.clone())
        .with("name", name);
    f.set_opt("group", row.group.clone());
    f.set_opt("note", row.note.clone().filter(|n| !n.is_empty()));
    f.set_opt("presence", presence);
    f
}

fn to_other_sessions(s: &Session<'_>, login: &str, rec: Fields) {
    let bytes = encode(&Packet::new("CONTACT-UPDATED").with_list(vec![rec]));
    s.sh.hub.send_except(login, s.session_id(), &bytes);
}

/// `CONTACTS-GET`.
pub async fn get(s: &mut Session<'_>, p: &Packet, login: &str) {
    match s.sh.db.contacts(login).await {
        Ok(rows) => {
            let list: Vec<Fields> = rows.iter().map(|r| record(s, r)).collect();
            s.reply(p, Packet::new("CONTACTS-GET-RESPONSE").with_list(list));
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
pub async fn add(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(id) = s.require(p, "id") else { return };
    let fail = |id: &str, reason: &str| {
        Packet::new("CONTACTS-ADD-FAILED")
            .with("id", id)
            .with("reason", reason)
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(id, &domain) else {
        return s.reply(p, fail(id, "bad-address"));
    };
    let addr = canonical(&target, &domain);
    if target == Target::Local(login.to_owned()) {
        return s.reply(p, fail(&addr, "self"));
    }
    let name = p.get("name").map(str::to_owned);
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return s.reply(p, fail(&addr, "bad-name"));
    }
    let group = p.get("group").filter(|g| !g.is_empty()).map(str::to_owned);
    if group.as_deref().is_some_and(|g| !valid_group(g)) {
        return s.reply(p, fail(&addr, "bad-group"));
    }
    let local = match &target {
        Target::Local(l) => Some(l.clone()),
        Target::Remote(_) => None,
    };
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
            s.reply(p, Packet::new("CONTACTS-ADD-OK").with("id", addr.clone()));
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
            let rec = record(s, &row);
            to_other_sessions(s, login, rec);
        }
        Ok(Outcome::UnknownUser) => s.reply(p, fail(&addr, "unknown-user")),
        Ok(Outcome::Exists) => s.reply(p, fail(&addr, "already-exists")),
        Ok(Outcome::TooMany) => s.reply(p, fail(&addr, "too-many-contacts")),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, "storage-error")),
    }
}

/// `CONTACTS-CHANGE id= [name=] [group=]`.
pub async fn change(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(id) = s.require(p, "id") else { return };
    let fail = |id: &str, reason: &str| {
        Packet::new("CONTACTS-CHANGE-FAILED")
            .with("id", id)
            .with("reason", reason)
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(id, &domain) else {
        return s.reply(p, fail(id, "not-found"));
    };
    let addr = canonical(&target, &domain);
    let name = p.get("name").map(str::to_owned);
    let group = p
        .get("group")
        .map(|g| Some(g.to_owned()).filter(|g| !g.is_empty()));
    if name.is_none() && group.is_none() {
        return s.reply(p, fail(&addr, "nothing-to-change"));
    }
    if name.as_deref().is_some_and(|n| !valid_name(n)) {
        return s.reply(p, fail(&addr, "bad-name"));
    }
    if let Some(Some(g)) = &group {
        if !valid_group(g) {
            return s.reply(p, fail(&addr, "bad-group"));
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
            s.reply(
                p,
                Packet::new("CONTACTS-CHANGE-OK").with("id", addr.clone()),
            );
            let mut rec = Fields::new().with("id", addr);
            rec.set_opt("name", name);
            if let Some(g) = group {
                rec.set("group", g.unwrap_or_default());
            }
            to_other_sessions(s, login, rec);
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(&addr, "not-found")),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, "storage-error")),
    }
}

/// `CONTACTS-DELETE id=`.
pub async fn delete(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(id) = s.require(p, "id") else { return };
    let fail = |id: &str, reason: &str| {
        Packet::new("CONTACTS-DELETE-FAILED")
            .with("id", id)
            .with("reason", reason)
    };
    let domain = s.sh.config.domain.clone();
    let Some(target) = parse_target(id, &domain) else {
        return s.reply(p, fail(id, "not-found"));
    };
    let addr = canonical(&target, &domain);
    let op = WriteOp::DeleteContact {
        owner: login.to_owned(),
        contact: addr.clone(),
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Done) => {
            s.reply(
                p,
                Packet::new("CONTACTS-DELETE-OK").with("id", addr.clone()),
            );
            to_other_sessions(
                s,
                login,
                Fields::new().with("id", addr).with("deleted", "true"),
            );
        }
        Ok(Outcome::NotFound) => s.reply(p, fail(&addr, "not-found")),
        Ok(_) | Err(_) => s.reply(p, fail(&addr, "storage-error")),
    }
}
