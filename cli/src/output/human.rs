//! The human-readable output (without `--json`): one or more lines per result or event.

use indicatif::HumanBytes;
use msim::proto::{Contact, Event, Presence};
use msim_shared::timestamp;

fn presence(p: &Presence) -> String {
    match p {
        Presence::Online => "online".to_owned(),
        Presence::LastSeen(at) => format!("last seen {}", timestamp::format(*at)),
        Presence::Hidden => "presence hidden".to_owned(),
    }
}

/// One line of `contacts list`.
pub fn contact(c: &Contact) -> String {
    let mut s = format!("{:<24} {}", c.id, c.name);
    if let Some(g) = &c.group {
        s.push_str(&format!("  [{g}]"));
    }
    if let Some(p) = &c.presence {
        s.push_str(&format!("  ({})", presence(p)));
    }
    if let Some(n) = c.note.as_deref().filter(|n| !n.is_empty()) {
        s.push_str(&format!("  “{n}”"));
    }
    s
}

/// A pushed event (`listen`).
pub fn event(event: &Event) -> String {
    let time = |at| {
        let s = timestamp::format(at);
        // 2024-01-01T12:34:56.789Z → 2024-01-01 12:34:56
        s.get(..19).map(|s| s.replace('T', " ")).unwrap_or(s)
    };
    match event {
        Event::Message(m) => format!("[{}] {}: {}    (id {})", time(m.at), m.from, m.text, m.id),
        Event::ReadReceipt(r) => format!("[{}] {} read your message {}", time(r.at), r.by, r.id),
        Event::TypingStarted(t) => format!("{} is typing…", t.from),
        Event::PresenceRequest(r) => format!(
            "{} asks to see your presence — `msim privacy approve {}` or `deny`",
            r.from, r.from
        ),
        Event::TypingEnded(t) => format!("{} stopped typing", t.from),
        Event::UpdateLastSeen(u) => format!("{} was last seen {}", u.id, time(u.at)),
        Event::ContactUpdated(c) => c
            .updates
            .iter()
            .map(|u| {
                let mut parts = Vec::new();
                if u.deleted {
                    parts.push("removed from contacts".to_owned());
                }
                if let Some(p) = &u.presence {
                    parts.push(presence(p));
                }
                if let Some(n) = &u.name {
                    parts.push(format!("name “{n}”"));
                }
                if let Some(n) = &u.note {
                    parts.push(format!("note “{n}”"));
                }
                if let Some(g) = &u.group {
                    parts.push(format!("group “{g}”"));
                }
                format!("{}: {}", u.id, parts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Event::FileOffered(f) => format!(
            "{} offers {} ({}) — `msim receive` to accept (transfer {})",
            f.from,
            f.filename,
            HumanBytes(f.size),
            f.transfer_id
        ),
        Event::DownloadGrant(g) => format!("{} from {} is ready to download", g.filename, g.from),
        Event::UploadGrant(g) => format!("transfer {} was accepted", g.transfer_id),
        Event::FileRejected(r) => format!("transfer {} rejected: {}", r.transfer_id, r.reason),
        Event::MarkReadFailed(f) => format!("cannot mark {} read: {}", f.id, f.reason),
        other => other.to_packet().to_string(),
    }
}
