//! What a message run moved, checked: every message acknowledged with `MESSAGE-SENT` reaches its
//! recipient once (by id and by content) and unaltered. Each message carries a tag
//! `<run>.<sender>.<n>` that is unique in the process, and a fixed padding. A message of an
//! earlier run that was not acknowledged with `MESSAGE-ACK` in time is legitimately delivered
//! again at the next login: it is not counted.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

/// The padding after the tag; a delivered message must end with exactly this.
pub const PADDING: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The text of message `n` of sender `sender` in run `run`, stamped with `stamp` (nanoseconds,
/// for latency).
pub fn text(stamp: u64, run: u64, sender: usize, n: u64) -> String {
    format!("{stamp} {run}.{sender}.{n} {PADDING}")
}

/// A number for a new message run, unique in this process.
pub fn next_run() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What one recipient got from its sender.
#[derive(Debug, Default)]
pub struct Received {
    /// Message id → tag.
    ids: HashMap<String, String>,
    tags: HashSet<String>,
    duplicated: u64,
    altered: Vec<String>,
    altered_ids: HashSet<String>,
}

impl Received {
    /// Records a delivered message of run `run` that should come from sender number `sender`
    /// (address `from_login@…`).
    pub fn record(
        &mut self,
        (run, sender): (u64, usize),
        from_login: &str,
        id: &str,
        from: &str,
        text: &str,
    ) {
        let mut parts = text.splitn(3, ' ');
        let (_stamp, tag, padding) = (parts.next(), parts.next(), parts.next());
        let fields: Vec<&str> = tag.unwrap_or_default().split('.').collect();
        if let [r, _, _] = fields[..] {
            if r.parse::<u64>().is_ok_and(|r| r < run) {
                return; // redelivered from an earlier run
            }
        }
        let tag_ok = match fields[..] {
            [r, s, n] => {
                r.parse() == Ok(run) && s.parse() == Ok(sender) && n.parse::<u64>().is_ok()
            }
            _ => false,
        };
        let from_ok = from.split_once('@').is_some_and(|(l, _)| l == from_login);
        if !(tag_ok && from_ok && padding == Some(PADDING)) {
            self.altered
                .push(format!("id={id} from={from} text={text:?}"));
            self.altered_ids.insert(id.to_owned());
            return;
        }
        let tag = tag.unwrap_or_default().to_owned();
        if self.ids.contains_key(id) || !self.tags.insert(tag.clone()) {
            self.duplicated += 1;
            return;
        }
        self.ids.insert(id.to_owned(), tag);
    }

    /// Whether message `id` arrived.
    pub fn has(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }
}

/// The totals of a run.
#[derive(Debug, Default, Clone)]
pub struct Integrity {
    /// Messages acknowledged with `MESSAGE-SENT`.
    pub acknowledged: u64,
    /// Distinct messages delivered intact.
    pub delivered: u64,
    /// Acknowledged but never delivered.
    pub lost: u64,
    /// Delivered again (same id, or same content under another id).
    pub duplicated: u64,
    /// Delivered with a changed text or sender.
    pub altered: u64,
    /// A few examples of what went wrong.
    pub examples: Vec<String>,
}

impl Integrity {
    /// Adds the outcome of one sender → recipient pair.
    pub fn add(&mut self, acked: &[String], got: &Received) {
        self.acknowledged += acked.len() as u64;
        self.delivered += got.ids.len() as u64;
        self.duplicated += got.duplicated;
        self.altered += got.altered.len() as u64;
        // Altered ones arrived (as something else): counted as altered, not lost.
        for id in acked
            .iter()
            .filter(|id| !got.has(id) && !got.altered_ids.contains(*id))
        {
            self.lost += 1;
            if self.examples.len() < 5 {
                self.examples.push(format!("lost: id={id}"));
            }
        }
        for a in got
            .altered
            .iter()
            .take(5usize.saturating_sub(self.examples.len()))
        {
            self.examples.push(format!("altered: {a}"));
        }
    }

    /// Fails on any lost, duplicated or altered message.
    pub fn ensure(&self) -> Result<()> {
        if self.lost + self.duplicated + self.altered > 0 {
            bail!(
                "messages: {} acknowledged, {} lost, {} duplicated, {} altered ({})",
                self.acknowledged,
                self.lost,
                self.duplicated,
                self.altered,
                self.examples.join("; ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_duplicated_and_altered_messages_are_counted() {
        let mut got = Received::default();
        let me = (2, 3);
        got.record(me, "u3", "m1", "u3@x", &text(1, 2, 3, 0));
        got.record(me, "u3", "m1", "u3@x", &text(1, 2, 3, 0)); // same id again
        got.record(me, "u3", "m9", "u3@x", &text(2, 2, 3, 0)); // same content, new id
        got.record(me, "u3", "m2", "u3@x", &text(1, 2, 3, 1).replace('x', "y"));
        got.record(me, "u3", "m3", "u4@x", &text(1, 2, 3, 2)); // wrong sender
        got.record(me, "u3", "m4", "u3@x", &text(1, 2, 4, 3)); // another sender's tag
        got.record(me, "u3", "m6", "u3@x", &text(1, 1, 3, 0)); // earlier run: ignored
        let mut i = Integrity::default();
        i.add(&["m1".into(), "m2".into(), "m5".into()], &got);
        assert_eq!((i.acknowledged, i.delivered), (3, 1));
        assert_eq!((i.lost, i.duplicated, i.altered), (1, 2, 3));
        assert!(i.ensure().is_err());
        let mut ok = Received::default();
        ok.record((0, 0), "u0", "a", "u0@x", &text(5, 0, 0, 7));
        let mut i = Integrity::default();
        i.add(&["a".into()], &ok);
        i.ensure().unwrap();
    }
}
