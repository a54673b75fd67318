//! Downloads waiting for an upload that has not started yet, keyed by transfer id.
//!
//! Creating a transfer wakes only the downloads of that transfer. (A single relay-wide
//! notification woke every waiting download on every new upload, and each then looked its
//! transfer up in the index again: quadratic in the number of transfers starting together.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The waiting downloads of every transfer; an entry lives as long as one of its waiters.
#[derive(Default)]
pub struct Waiters {
    by_id: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

impl Waiters {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a waiter for `id`; wake-ups go to the returned guard's [`Notify`].
    pub fn wait(&self, id: &str) -> Waiting<'_> {
        let notify = {
            let mut map = self.map();
            let entry = map
                .entry(id.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Waiting {
            waiters: self,
            id: id.to_owned(),
            notify,
        }
    }

    /// Wake the downloads waiting for `id` (its upload was just created); whether any were.
    pub fn created(&self, id: &str) -> bool {
        match self.map().get(id) {
            Some((notify, _)) => {
                notify.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Transfers with at least one waiting download.
    #[cfg(test)]
    fn transfers(&self) -> usize {
        self.map().len()
    }
}

/// One registered waiter; unregisters on drop.
pub struct Waiting<'a> {
    waiters: &'a Waiters,
    id: String,
    notify: Arc<Notify>,
}

impl Waiting<'_> {
    /// The notification to await (enable it before checking the condition).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_waiters_of_that_transfer_and_forgets_them() {
        let waiters = Waiters::default();
        let a = waiters.wait("a");
        let b = waiters.wait("b");
        let a2 = waiters.wait("a");
        assert_eq!(waiters.transfers(), 2);
        {
            let wake_a = a.notify().notified();
            let wake_b = b.notify().notified();
            tokio::pin!(wake_a, wake_b);
            wake_a.as_mut().enable();
            wake_b.as_mut().enable();
            assert!(waiters.created("a"), "a has waiters");
            assert!(!waiters.created("unknown"), "nobody waits for it");
            wake_a.await;
            assert!(
                futures::FutureExt::now_or_never(wake_b).is_none(),
                "b was not created"
            );
        }
        drop(a);
        assert_eq!(waiters.transfers(), 2, "a still has a waiter");
        drop(a2);
        drop(b);
        assert_eq!(waiters.transfers(), 0);
    }
}
