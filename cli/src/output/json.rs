//! The `--json` output: one object per line on stdout, each a struct below.
//!
//! These shapes are a stable interface for scripts (documented in the README and `--help`):
//! fields are only ever added, never renamed, removed or retyped. Times are RFC 3339 strings
//! in UTC; absent values are `null`. The order of keys within an object is not part of the
//! interface.

use std::path::Path;

use msim::proto::{Contact, ContactUpdate, Event, Presence};
use msim_shared::timestamp;
use serde::Serialize;
use time::OffsetDateTime;

/// A time as printed: RFC 3339, UTC.
fn at(t: OffsetDateTime) -> String {
    timestamp::format(t)
}

fn presence(p: &Option<Presence>) -> Option<String> {
    p.as_ref().map(Presence::to_wire)
}

/// Any failure: `{"error","kind","exit"}`.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// The message, as on stderr without the `msim: ` prefix.
    pub error: String,
    /// `usage`, `auth`, `refused`, `interrupted` or `error`.
    pub kind: &'static str,
    /// The exit code.
    pub exit: u8,
}

/// `{"ok":true}`, optionally with the `id` the command was about (`read`, `contacts add`…).
#[derive(Debug, Serialize)]
pub struct Done<'a> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
}

impl<'a> Done<'a> {
    pub fn new() -> Done<'a> {
        Done { ok: true, id: None }
    }

    pub fn with_id(id: &'a str) -> Done<'a> {
        Done {
            ok: true,
            id: Some(id),
        }
    }
}

/// `register`.
#[derive(Debug, Serialize)]
pub struct Registered<'a> {
    pub ok: bool,
    pub login: &'a str,
}

/// `login`: the session the server granted.
#[derive(Debug, Serialize)]
pub struct LoggedIn<'a> {
    pub ok: bool,
    pub login: &'a str,
    pub domain: &'a str,
    pub server: &'a str,
    pub federation: bool,
    pub max_text: u64,
    pub max_file_size: u64,
}

/// `send`.
#[derive(Debug, Serialize)]
pub struct Sent<'a> {
    pub ok: bool,
    pub id: &'a str,
    pub to: &'a str,
    pub at: String,
}

/// `typing`.
#[derive(Debug, Serialize)]
pub struct Typing<'a> {
    pub ok: bool,
    pub to: &'a str,
    pub typing: bool,
}

/// `profile show`.
#[derive(Debug, Serialize)]
pub struct Profile<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub note: &'a str,
}

/// `privacy last-seen`.
#[derive(Debug, Serialize)]
pub struct LastSeenSet<'a> {
    pub ok: bool,
    #[serde(rename = "last-seen")]
    pub last_seen: &'a str,
}

/// `privacy show`.
#[derive(Debug, Serialize)]
pub struct Privacy<'a> {
    /// `everyone`, `contacts` or `nobody`.
    #[serde(rename = "last-seen")]
    pub last_seen: &'a str,
    /// Blocked addresses.
    pub blocked: &'a [String],
}

/// One line of `contacts list`.
#[derive(Debug, Serialize)]
pub struct ContactLine<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub group: Option<&'a str>,
    pub note: Option<&'a str>,
    /// `"online"`, an RFC 3339 time, or `null`.
    pub presence: Option<String>,
}

impl<'a> From<&'a Contact> for ContactLine<'a> {
    fn from(c: &'a Contact) -> Self {
        ContactLine {
            id: &c.id,
            name: &c.name,
            group: c.group.as_deref(),
            note: c.note.as_deref(),
            presence: presence(&c.presence),
        }
    }
}

/// One entry of a `contact-updated` event.
#[derive(Debug, Serialize)]
pub struct ContactChange<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub group: Option<&'a str>,
    pub note: Option<&'a str>,
    pub presence: Option<String>,
    pub deleted: bool,
}

impl<'a> From<&'a ContactUpdate> for ContactChange<'a> {
    fn from(u: &'a ContactUpdate) -> Self {
        ContactChange {
            id: &u.id,
            name: u.name.as_deref(),
            group: u.group.as_deref(),
            note: u.note.as_deref(),
            presence: presence(&u.presence),
            deleted: u.deleted,
        }
    }
}

/// The lines of `send-file` and `receive`, told apart by `event`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum FileLine<'a> {
    /// `send-file`: offered, waiting for the answer.
    Pending {
        transfer_id: &'a str,
        to: &'a str,
        expires: String,
    },
    /// `send-file`: uploaded.
    Sent {
        ok: bool,
        transfer_id: &'a str,
        to: &'a str,
        filename: &'a str,
        size: u64,
        sha256: &'a str,
    },
    /// `receive`: downloaded (and verified when `verified`).
    Received {
        ok: bool,
        transfer_id: &'a str,
        from: &'a str,
        filename: &'a str,
        path: &'a Path,
        size: u64,
        sha256: &'a str,
        verified: bool,
    },
    /// `receive`: accepting or downloading this offer failed (the others go on).
    Failed {
        ok: bool,
        transfer_id: &'a str,
        from: &'a str,
        filename: &'a str,
        error: &'a str,
    },
    /// `receive`: the offer was turned down.
    Rejected {
        transfer_id: &'a str,
        from: &'a str,
        filename: &'a str,
    },
}

/// One pushed event (`listen`), told apart by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventLine<'a> {
    Message {
        id: &'a str,
        from: &'a str,
        to: &'a str,
        at: String,
        text: &'a str,
    },
    Read {
        id: &'a str,
        by: &'a str,
        at: String,
    },
    Typing {
        from: &'a str,
        typing: bool,
    },
    LastSeen {
        id: &'a str,
        at: String,
    },
    ContactUpdated {
        updates: Vec<ContactChange<'a>>,
    },
    FileOffer {
        transfer_id: &'a str,
        from: &'a str,
        filename: &'a str,
        size: u64,
        sha256: Option<&'a str>,
        mime: Option<&'a str>,
        expires: String,
    },
    FileReady {
        transfer_id: &'a str,
        from: &'a str,
        filename: &'a str,
        size: u64,
        url: &'a str,
    },
    FileAccepted {
        transfer_id: &'a str,
    },
    FileRejected {
        transfer_id: &'a str,
        reason: &'a str,
    },
    ReadFailed {
        id: &'a str,
        reason: &'a str,
    },
    /// Anything else, as the raw packet line.
    Other {
        packet: String,
    },
}

impl<'a> From<&'a Event> for EventLine<'a> {
    fn from(event: &'a Event) -> Self {
        match event {
            Event::Message(m) => EventLine::Message {
                id: &m.id,
                from: &m.from,
                to: &m.to,
                at: at(m.at),
                text: &m.text,
            },
            Event::ReadReceipt(r) => EventLine::Read {
                id: &r.id,
                by: &r.by,
                at: at(r.at),
            },
            Event::TypingStarted(t) => EventLine::Typing {
                from: &t.from,
                typing: true,
            },
            Event::TypingEnded(t) => EventLine::Typing {
                from: &t.from,
                typing: false,
            },
            Event::UpdateLastSeen(u) => EventLine::LastSeen {
                id: &u.id,
                at: at(u.at),
            },
            Event::ContactUpdated(c) => EventLine::ContactUpdated {
                updates: c.updates.iter().map(ContactChange::from).collect(),
            },
            Event::FileOffered(f) => EventLine::FileOffer {
                transfer_id: &f.transfer_id,
                from: &f.from,
                filename: &f.filename,
                size: f.size,
                sha256: f.sha256.as_deref(),
                mime: f.mime.as_deref(),
                expires: at(f.expires),
            },
            Event::DownloadGrant(g) => EventLine::FileReady {
                transfer_id: &g.transfer_id,
                from: &g.from,
                filename: &g.filename,
                size: g.size,
                url: &g.url,
            },
            Event::UploadGrant(g) => EventLine::FileAccepted {
                transfer_id: &g.transfer_id,
            },
            Event::FileRejected(r) => EventLine::FileRejected {
                transfer_id: &r.transfer_id,
                reason: r.reason.as_str(),
            },
            Event::MarkReadFailed(f) => EventLine::ReadFailed {
                id: &f.id,
                reason: f.reason.as_str(),
            },
            other => EventLine::Other {
                packet: other.to_packet().to_string(),
            },
        }
    }
}

/// The documented shapes, field by field: a change here is a change to a stable interface.
#[cfg(test)]
mod tests {
    use super::*;
    use msim::proto::{Message, Ping, TypingStarted};
    use serde_json::{json, Value};

    fn value(v: &impl Serialize) -> Value {
        serde_json::to_value(v).expect("serialisable")
    }

    #[test]
    fn events_have_their_documented_fields() {
        let at = timestamp::parse("2026-01-02T03:04:05.678Z").expect("time");
        let message = Event::Message(Message {
            id: "m1".into(),
            from: "bob@x".into(),
            to: "alice@x".into(),
            at,
            text: "hi".into(),
        });
        assert_eq!(
            value(&EventLine::from(&message)),
            json!({"type": "message", "id": "m1", "from": "bob@x", "to": "alice@x",
                   "at": "2026-01-02T03:04:05.678Z", "text": "hi"})
        );
        let typing = Event::TypingStarted(TypingStarted {
            from: "bob@x".into(),
        });
        assert_eq!(
            value(&EventLine::from(&typing)),
            json!({"type": "typing", "from": "bob@x", "typing": true})
        );
        assert_eq!(
            value(&EventLine::from(&Event::Ping(Ping))),
            json!({"type": "other", "packet": "PING"})
        );
    }

    #[test]
    fn results_have_their_documented_fields() {
        assert_eq!(value(&Done::new()), json!({"ok": true}));
        assert_eq!(
            value(&Done::with_id("bob")),
            json!({"ok": true, "id": "bob"})
        );
        let contact = Contact {
            id: "bob@x".into(),
            name: "Bob".into(),
            group: None,
            note: Some("away".into()),
            presence: Some(Presence::Online),
        };
        assert_eq!(
            value(&ContactLine::from(&contact)),
            json!({"id": "bob@x", "name": "Bob", "group": null, "note": "away",
                   "presence": "online"})
        );
        let received = FileLine::Received {
            ok: true,
            transfer_id: "t1",
            from: "bob@x",
            filename: "cat.jpg",
            path: Path::new("/tmp/cat.jpg"),
            size: 3,
            sha256: "abc",
            verified: true,
        };
        assert_eq!(
            value(&received),
            json!({"event": "received", "ok": true, "transfer_id": "t1", "from": "bob@x",
                   "filename": "cat.jpg", "path": "/tmp/cat.jpg", "size": 3, "sha256": "abc",
                   "verified": true})
        );
        let failure = Failure {
            error: "no login".into(),
            kind: "usage",
            exit: 2,
        };
        assert_eq!(
            value(&failure),
            json!({"error": "no login", "kind": "usage", "exit": 2})
        );
    }
}
