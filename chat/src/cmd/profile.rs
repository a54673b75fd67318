//! Profile (PROTOCOL.md §9). A change reaches every online user who has this user as a contact
//! as `CONTACT-UPDATED` with only the changed fields.

use crate::cmd::contacts::valid_name;
use crate::cmd::presence::presence_of;
use crate::cmd::{parse_target, Target};
use crate::db::{Outcome, WriteOp};
use crate::session::Session;
use msim_shared::{Fields, Packet};
use tracing::warn;

/// Longest profile note (characters).
pub const MAX_NOTE: usize = 1024;

/// `PROFILE-UPDATE [name=] [note=]`.
pub async fn update(s: &mut Session<'_>, p: &Packet, login: &str) {
    let fail = |reason: &str| Packet::new("PROFILE-UPDATE-FAILED").with("reason", reason);
    let name = p.get("name").map(str::to_owned);
    let note = p.get("note").map(str::to_owned);
    if name.is_none() && note.is_none() {
        return s.reply(p, fail("nothing-to-change"));
    }
    // An empty name clears it (contacts then show the login).
    if name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && !valid_name(n))
    {
        return s.reply(p, fail("bad-name"));
    }
    if note.as_deref().is_some_and(|n| {
        n.chars().count() > MAX_NOTE || n.chars().any(|c| c.is_control() && c != '\n')
    }) {
        return s.reply(p, fail("note-too-long"));
    }
    let op = WriteOp::UpdateProfile {
        login: login.to_owned(),
        name: name.clone(),
        note: note.clone(),
    };
    let old = match s.sh.writer.write(op).await {
        Ok(Outcome::OldProfile(old)) => old,
        Ok(_) | Err(_) => return s.reply(p, fail("storage-error")),
    };
    s.reply(p, Packet::new("PROFILE-UPDATE-OK"));
    let name_changed = name.as_ref().filter(|n| **n != old.name);
    let note_changed = note.as_ref().filter(|n| **n != old.note);
    if name_changed.is_none() && note_changed.is_none() {
        return;
    }
    let watchers = match s.sh.db.watchers(login).await {
        Ok(w) => w,
        Err(e) => {
            warn!("profile watchers: {e}");
            return;
        }
    };
    let addr = s.addr(login);
    for (owner, defaulted) in watchers {
        if !s.sh.hub.is_online(&owner) {
            continue;
        }
        let mut rec = Fields::new().with("id", addr.clone());
        if let Some(n) = name_changed.filter(|_| defaulted) {
            rec.set("name", if n.is_empty() { login } else { n.as_str() });
        }
        if let Some(n) = note_changed {
            rec.set("note", n.clone());
        }
        if rec.len() > 1 {
            s.sh.hub
                .send_packet(&owner, &Packet::new("CONTACT-UPDATED").with_list(vec![rec]));
        }
    }
}

/// `PROFILE-GET [id=]`.
pub async fn get(s: &mut Session<'_>, p: &Packet, login: &str) {
    let domain = s.sh.config.domain.clone();
    let raw = p.get("id").unwrap_or(login).to_owned();
    let fail = |reason: &str| {
        Packet::new("PROFILE-GET-FAILED")
            .with("id", raw.clone())
            .with("reason", reason)
    };
    let who = match parse_target(&raw, &domain) {
        None => return s.reply(p, fail("bad-address")),
        Some(Target::Remote(_)) => return s.reply(p, fail("federation-disabled")),
        Some(Target::Local(l)) => l,
    };
    match s.sh.db.profile(&who).await {
        Ok(Some(prof)) => {
            let presence = presence_of(&s.sh, &who, prof.last_seen);
            let pkt = Packet::new("PROFILE")
                .with("id", s.addr(&who))
                .with("name", prof.name)
                .with("note", prof.note)
                .with_opt("presence", presence);
            s.reply(p, pkt);
        }
        Ok(None) => s.reply(p, fail("unknown-user")),
        Err(e) => {
            warn!("profile get: {e}");
            s.reply(p, fail("storage-error"));
        }
    }
}
