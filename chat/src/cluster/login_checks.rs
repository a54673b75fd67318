//! One password check at a time per login on this node, while the shared throttle is asked.
//!
//! On one node (or SQLite) the throttle's check and its record of a failure are one step: no
//! other guess runs between them. In a cluster both are database round trips, so a burst of
//! parallel guesses for one login all read "no wait" before the first failure was recorded
//! (an attack got 14 of 200 guesses checked). Guesses for one login now queue on this node,
//! so each reads the failures of the ones before it: a burst gets at most one check per node
//! before the throttle holds.

//!
//! The queue is bounded in length ([`MAX_WAITING`]) and in time ([`TURN_WAIT`]): a flood of
//! guesses for one login would otherwise put its owner (without a trusted device) at the back
//! of a queue as long as the flood, one or two database round trips per guess. Past either
//! bound the attempt is answered `throttled` without being checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a check waits for its login's turn on this node.
pub(crate) const TURN_WAIT: Duration = Duration::from_secs(3);

/// Most checks holding or waiting for one login's turn on this node.
pub(crate) const MAX_WAITING: usize = 8;

/// The per-login queues of one node; an entry lives while a check holds or waits for it.
pub(crate) struct LoginChecks {
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wait: Duration,
    max_waiting: usize,
}

impl Default for LoginChecks {
    fn default() -> LoginChecks {
        LoginChecks::new(TURN_WAIT, MAX_WAITING)
    }
}

/// This login's turn (or a place in its queue); the next check for it starts when this is
/// dropped, and the login's entry goes with the last one.
pub(crate) struct Turn<'a> {
    checks: &'a LoginChecks,
    login: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LoginChecks {
    pub(crate) fn new(wait: Duration, max_waiting: usize) -> LoginChecks {
        LoginChecks {
            queues: Mutex::default(),
            wait,
            max_waiting: max_waiting.max(1),
        }
    }

    /// Waits for `login`'s turn: `None` when as many checks already hold or wait for it as
    /// allowed, or when it did not come within the wait (answer `throttled`).
    pub(crate) async fn turn(&self, login: &str) -> Option<Turn<'_>> {
        let (mut turn, queue) = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queues.entry(login.to_owned()).or_default();
            // The map's reference, and one per check holding or waiting.
            if Arc::strong_count(queue) > self.max_waiting {
                return None;
            }
            let turn = Turn {
                checks: self,
                login: login.to_owned(),
                guard: None,
            };
            (turn, queue.clone())
        };
        // One reference per check, waiting (in the lock's future) or holding (in its guard).
        // Given up: the future goes first, then `turn`, which empties the entry if last.
        let guard = tokio::time::timeout(self.wait, queue.lock_owned())
            .await
            .ok()?;
        turn.guard = Some(guard);
        Some(turn)
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
        let first = checks.turn("bob").await.expect("a turn");
        // Another login is not held up.
        drop(checks.turn("alice").await.expect("a turn"));
        let second = checks.turn("bob");
        tokio::pin!(second);
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "bob's second check waits"
        );
        drop(first);
        drop(second.await.expect("a turn"));
        assert!(checks.queues.lock().expect("not poisoned").is_empty());
    }

    #[tokio::test]
    async fn a_turn_is_waited_for_a_bounded_time_by_a_bounded_number() {
        let checks = LoginChecks::new(Duration::from_millis(50), 3);
        let held = checks.turn("bob").await.expect("a turn");
        // Two more may wait; a fourth check is refused at once.
        let (w1, w2) = (checks.turn("bob"), checks.turn("bob"));
        tokio::pin!(w1, w2);
        assert!(futures::poll!(w1.as_mut()).is_pending());
        assert!(futures::poll!(w2.as_mut()).is_pending());
        let refused = checks.turn("bob");
        tokio::pin!(refused);
        assert!(matches!(
            futures::poll!(refused.as_mut()),
            std::task::Poll::Ready(None)
        ));
        // The waiters give up after the wait while the turn is still held.
        let gave_up = tokio::time::timeout(Duration::from_secs(10), async {
            (w1.await.is_none(), w2.await.is_none())
        })
        .await
        .expect("bounded wait");
        assert_eq!(gave_up, (true, true));
        // Their places are free again, and the map empties with the last turn.
        drop(checks.turn("alice").await.expect("another login"));
        let next = checks.turn("bob");
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending());
        drop(held);
        drop(next.await.expect("the next turn"));
        assert!(checks.queues.lock().expect("not poisoned").is_empty());
    }
}
