//! Where the reader's presence reads stand (`fanout::Reader`): the snapshot of the last read,
//! the logins of notes applied since, and when the next read must cover everything.
//!
//! A read of "the logins changed since snapshot S" cannot repair a note applied after S that
//! is older than what S showed (a later note of the same login lost on a full inbox or
//! outbox, or a failed NOTIFY): the login's change is visible in S, so it is never read
//! again. Hence: the logins of applied notes are read again on the next tick, a dropped note
//! makes the next read a full one, and every [`FULL_EVERY`] ticks the read is full anyway.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A full read every this many ticks, whatever else happened (the backstop).
pub(super) const FULL_EVERY: u32 = 60;
/// More logins to read again than this: read everything instead (bounds the set).
const RECHECK_MAX: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct PresenceCursor {
    /// The snapshot of the last read (`None`: read everything next).
    seen: Option<String>,
    /// Logins of presence notes applied since the last read.
    recheck: HashSet<String>,
    /// Incremental reads since the last full one.
    ticks: u32,
    /// Set by the listener when it drops a note (a full inbox).
    pub(super) dropped: Arc<AtomicBool>,
}

impl PresenceCursor {
    /// The next read covers everything (the listener reconnected: the database may have
    /// restarted, and snapshots taken before it mean nothing).
    pub(super) fn reset(&mut self) {
        self.seen = None;
        self.recheck.clear();
    }

    /// A presence note of `login` was applied to the mirror.
    pub(super) fn applied(&mut self, login: &str) {
        if self.recheck.len() >= RECHECK_MAX {
            self.seen = None;
        } else if self.seen.is_some() {
            self.recheck.insert(login.to_owned());
        }
    }

    /// What the next read covers: `None` for everything, or the snapshot of the last read
    /// and the logins to read again whatever their change.
    pub(super) fn next(&mut self) -> Option<(String, Vec<String>)> {
        if self.dropped.swap(false, Ordering::Relaxed) {
            self.seen = None;
        }
        self.ticks += 1;
        if self.ticks >= FULL_EVERY {
            self.seen = None;
        }
        if self.seen.is_none() {
            self.recheck.clear();
        }
        let seen = self.seen.clone()?;
        Some((seen, self.recheck.iter().cloned().collect()))
    }

    /// The read in `snapshot` succeeded (`full`: of everything). The reader applies no note
    /// while it reads, so every note applied so far is covered by it.
    pub(super) fn done(&mut self, snapshot: String, full: bool) {
        if full {
            self.ticks = 0;
        }
        self.recheck.clear();
        self.seen = Some(snapshot);
    }
}
