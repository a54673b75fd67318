//! In-memory mirror of the `blocks` table, so the hot paths (every message, typing
//! notification and offer) check a block without a database round trip. Its size is bounded
//! by the table's: at most `max_blocks` per user. The table is written first; the mirror is
//! updated once the write committed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Who blocked whom.
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    // owner → blocked logins. A std mutex: short map operations, never held across await.
    by_owner: Mutex<HashMap<String, HashSet<String>>>,
}

impl Blocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.by_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mirror of these (owner, blocked) pairs.
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Blocks {
        let b = Blocks::default();
        {
            let mut map = b.lock();
            for (owner, blocked) in pairs {
                map.entry(owner).or_default().insert(blocked);
            }
        }
        b
    }

    /// Whether `owner` blocked `who`.
    pub(crate) fn is_blocked(&self, owner: &str, who: &str) -> bool {
        self.lock().get(owner).is_some_and(|s| s.contains(who))
    }

    /// Records a committed block.
    pub(crate) fn insert(&self, owner: &str, who: &str) {
        self.lock()
            .entry(owner.to_owned())
            .or_default()
            .insert(who.to_owned());
    }

    /// Records a committed unblock.
    pub(crate) fn remove(&self, owner: &str, who: &str) {
        let mut map = self.lock();
        if let Some(set) = map.get_mut(owner) {
            set.remove(who);
            if set.is_empty() {
                map.remove(owner);
            }
        }
    }
}
