//! One password check at a time per login on this node, while the shared throttle is asked.
//!
//! On one node (or SQLite) the throttle's check and its record of a failure are one step: no
//! other guess runs between them. In a cluster both are database round trips, so a burst of
//! parallel guesses for one login all read "no wait" before the first failure was recorded
//! (an attack got 14 of 200 guesses checked). Guesses for one login now queue on this node,
//! so each reads the failures of the ones before it: a burst gets at most one check per node
//! before the throttle holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The per-login queues of one node; an entry lives while a check holds or waits for it.
#[derive(Default)]
pub(crate) struct LoginChecks {
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// This login's turn; the next check for it starts when this is dropped.
pub(crate) struct Turn<'a> {
    checks: &'a LoginChecks,
    login: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LoginChecks {
    /// Waits for `login`'s turn.
    pub(crate) async fn turn(&self, login: &str) -> Turn<'_> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.entry(login.to_owned()).or_default().clone()
        };
        let guard = queue.lock_owned().await;
        Turn {
            checks: self,
            login: login.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut queues = self.checks.queues.lock().unwrap_or_else(|p| p.into_inner());
        // Gone once nobody holds or waits (only the map's own reference is left).
        if queues
            .get(&self.login)
            .is_some_and(|q| Arc::strong_count(q) == 1)
        {
            queues.remove(&self.login);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_login_waits_for_its_turn_and_the_map_empties() {
        let checks = LoginChecks::default();
        let first = checks.turn("bob").await;
        // Another login is not held up.
        drop(checks.turn("alice").await);
        let second = checks.turn("bob");
        tokio::pin!(second);
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "bob's second check waits"
        );
        drop(first);
        drop(second.await);
        assert!(checks.queues.lock().expect("not poisoned").is_empty());
    }
}
