//! Stored results for a user's next logins (file results, expired-message notices,
//! PROTOCOL.md §5.7 and §10.6): written in one batch, then pushed to the users' live sessions
//! tagged with their seq, so a session logging in meanwhile gets each one once.

use crate::cmd::context::Ctx;
use crate::db::{Notice, NoticeBody, Outcome, WriteOp};
use crate::hub::{encode, Stream};
use tracing::warn;

/// One result for one user.
pub(crate) struct Note {
    /// Who gets it.
    login: String,
    /// What it is about (the transfer or message id).
    subject: String,
    /// What to tell them (stored as data, sent as its packet).
    body: NoticeBody,
}

impl Note {
    pub(crate) fn new(login: String, subject: &str, body: NoticeBody) -> Note {
        Note {
            login,
            subject: subject.to_owned(),
            body,
        }
    }
}

impl Note {
    /// The row that keeps it until `expires` (micros).
    pub(crate) fn stored(&self, expires: i64) -> Notice {
        Notice {
            login: self.login.clone(),
            transfer_id: self.subject.clone(),
            body: self.body.clone(),
            expires_at: expires,
        }
    }
}

/// Stores `notes` until `expires` (delivered at every login until then) and delivers them live.
/// When storing fails they still reach whoever is online.
pub(crate) async fn notify(ctx: &Ctx<'_>, expires: i64, notes: Vec<Note>) {
    let rows = notes.iter().map(|n| n.stored(expires)).collect();
    let seqs = match ctx.writer.write(WriteOp::AddNotices(rows)).await {
        Ok(Outcome::Notices(seqs)) => seqs,
        r => {
            if let Err(e) = r {
                let subject = notes.first().map_or("", |n| n.subject.as_str());
                warn!(subject, "storing results: {e}");
            }
            Vec::new()
        }
    };
    deliver(ctx, &notes, &seqs);
}

/// Delivers `notes` live, each tagged with its stored seq (`seqs[i]`; untagged without one).
pub(crate) fn deliver(ctx: &Ctx<'_>, notes: &[Note], seqs: &[i64]) {
    for (i, n) in notes.iter().enumerate() {
        let bytes = encode(&n.body.to_packet());
        match seqs.get(i) {
            Some(seq) => ctx
                .hub
                .send_seq(&n.login, None, Stream::Notices, *seq, &bytes),
            None => ctx.hub.send(&n.login, &bytes),
        };
    }
}
