//! This node's presence rows (`cluster_presence`), kept equal to the hub's local logins.
//!
//! A change is never decided from what a session saw when it opened or closed: two sessions
//! of one user, one closing while the other opens, would otherwise race (the close's `DELETE`
//! could run after the open's `INSERT` and leave the user without a row while connected).
//! Every change of one login runs alone on this node (a lock per login) and writes what the
//! hub holds at that moment. A change that failed (the database away) is retried by
//! [`Presence::reconcile`] at the next heartbeat, which also puts every row back after the
//! node was declared dead while cut off. A change that failed may still have committed (its
//! answer timed out): the login's row is then unknown, and written again whatever the hub
//! holds, until a change's answer arrives.
//!
//! Announcements: a change that got its answer announces the transition it made, if any.
//! One without an answer announced nothing, yet may have made a transition; the database
//! records each login's last transition with the id of the change that made it
//! (`nodes::set_presence`), and the repair announces it only if it is still the latest and
//! was made by one of this node's unanswered changes. Deciding from the counts alone, as
//! before, announced "offline" a second time when another node's close had emptied the login
//! (and announced it) after this node's late close.
//!
//! Two unanswered changes that both committed and both made transitions (online then
//! offline, or offline then online) leave the login as the watchers last saw it, and the
//! repair announces that state once more: what the watchers saw cannot be told from this
//! node's view without a guess that another node's change can make stale, and such a guess
//! hid real changes; a repeat is harmless.

use super::fanout::{within, Outbox};
use super::{nodes, NodeId};
use crate::hub::Hub;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// Unanswered change ids kept per login: a change commits within its statement limits or
/// not at all, and a repair is tried every heartbeat, so older ones are long settled.
const UNANSWERED: usize = 8;

/// A login whose changes got no answer.
#[derive(Debug, Clone, Default)]
struct Unknown {
    /// The ids of its changes that got no answer (the latest [`UNANSWERED`]).
    ids: Vec<i64>,
}

/// What a change means for the user's watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The user's first session anywhere.
    Online,
    /// The user's last session anywhere ended.
    Offline,
}

/// This node's presence rows.
pub(crate) struct Presence {
    pool: PgPool,
    node: NodeId,
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    statement: Duration,
    /// Logins whose row this node has stored (as far as it knows).
    stored: Mutex<HashSet<String>>,
    /// Logins whose last change failed: whether their row exists is unknown (a timed-out
    /// write may have committed). Removed by the next change that gets an answer.
    unknown: Mutex<HashMap<String, Unknown>>,
    /// One lock per login with a change running (removed when the last user is done).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Logins whose row differed from the hub at the last reconcile; `None`: repair every
    /// difference at the next one (the rows were removed).
    suspects: Mutex<Option<HashSet<String>>>,
}

impl Presence {
    pub(crate) fn new(
        pool: PgPool,
        node: NodeId,
        hub: Arc<Hub>,
        outbox: Arc<Outbox>,
        statement: Duration,
    ) -> Presence {
        Presence {
            pool,
            node,
            hub,
            outbox,
            statement,
            stored: Mutex::new(HashSet::new()),
            unknown: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            suspects: Mutex::new(Some(HashSet::new())),
        }
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unknown>> {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings `login`'s row in line with the hub; returns what to announce (nothing on a
    /// database error: the next [`Presence::reconcile`] retries).
    pub(crate) async fn sync(&self, login: &str) -> Option<Change> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(login.to_owned()).or_default().clone()
        };
        let change = {
            let _held = lock.lock().await;
            self.sync_locked(login).await
        };
        drop(lock);
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.get(login).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(login);
        }
        change
    }

    async fn sync_locked(&self, login: &str) -> Option<Change> {
        let want = self.hub.is_local(login);
        // After a failed change nothing is known: write, and let the database tell what was
        // announced (see the module's comment).
        let unanswered = self.unknown().get(login).cloned();
        if unanswered.is_none() && want == self.stored().contains(login) {
            return None;
        }
        let change = nodes::change_id();
        let set = nodes::set_presence(&self.pool, self.node, login, want, change, self.statement);
        match within(self.statement, set).await {
            Ok(changed) => {
                if want {
                    self.stored().insert(login.to_owned());
                } else {
                    self.stored().remove(login);
                }
                if unanswered.is_some() {
                    self.unknown().remove(login);
                }
                self.outbox.presence(login, want);
                match unanswered {
                    Some(u) => announcement(&changed, &u.ids),
                    None => announcement(&changed, &[]),
                }
            }
            Err(e) => {
                warn!(login, "cluster presence: {e}");
                let mut unknown = self.unknown();
                let u = unknown.entry(login.to_owned()).or_default();
                if u.ids.len() == UNANSWERED {
                    u.ids.remove(0);
                }
                u.ids.push(change);
                None
            }
        }
    }

    /// Brings every row in line with the hub (a heartbeat's job); returns the logins that
    /// came online and went offline anywhere. Costs one pass over the local logins; only
    /// differences reach the database. A difference is only repaired when the previous
    /// reconcile saw it too: one that a session's own change is about to settle is left to
    /// that change (which announces it). Logins whose row is unknown are written every time.
    pub(crate) async fn reconcile(&self) -> (Vec<String>, Vec<String>) {
        let local: HashSet<String> = self.hub.local_logins().into_iter().collect();
        let differ: HashSet<String> = {
            let stored = self.stored();
            local.symmetric_difference(&stored).cloned().collect()
        };
        let act: Vec<String> = {
            let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
            let mut act: HashSet<String> = match suspects.as_ref() {
                Some(before) => differ.intersection(before).cloned().collect(),
                None => differ.iter().cloned().collect(),
            };
            *suspects = Some(differ);
            act.extend(self.unknown().keys().cloned());
            act.into_iter().collect()
        };
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for login in act {
            match self.sync(&login).await {
                Some(Change::Online) => online.push(login),
                Some(Change::Offline) => offline.push(login),
                None => {}
            }
        }
        (online, offline)
    }

    /// This node was declared dead: its rows are gone (the next reconcile stores them again
    /// and announces the users who are online nowhere else).
    pub(crate) fn forget_all(&self) {
        self.stored().clear();
        self.unknown().clear();
        *self.suspects.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What to announce after a change that got its answer, given the ids of this node's earlier
/// changes of the login that got none (`unanswered`; those announced nothing).
fn announcement(changed: &nodes::Changed, unanswered: &[i64]) -> Option<Change> {
    let state = |online| {
        if online {
            Change::Online
        } else {
            Change::Offline
        }
    };
    let unannounced = |t: &Option<nodes::Transition>| {
        t.filter(|t| unanswered.contains(&t.change))
            .map(|t| t.online)
    };
    if changed.made {
        // Undoing a transition nobody announced: the watchers already see this state.
        if unannounced(&changed.before).is_some() {
            return None;
        }
        return changed.after.map(|t| state(t.online));
    }
    // The latest transition is one of ours that nobody announced: announce it now. Made by
    // another node (after ours, or ours never committed): that node announces it. When two
    // late changes of ours both made transitions (online, then offline), the watchers may
    // already see this state and hear it once more: a repeat is harmless, while guessing
    // what they saw from this node's view (a snapshot that another node's change can make
    // stale) could hide a real change until the login's next one.
    unannounced(&changed.after).map(state)
}

#[cfg(test)]
impl Presence {
    /// The ids of `login`'s changes that got no answer (tests simulate their late commit).
    pub(crate) fn unanswered(&self, login: &str) -> Vec<i64> {
        self.unknown()
            .get(login)
            .map(|u| u.ids.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::nodes::{Changed, Transition};
    use super::*;

    fn t(online: bool, change: i64) -> Option<Transition> {
        Some(Transition { online, change })
    }

    #[test]
    fn announcements_after_unanswered_changes() {
        let c = |before, after, made| Changed {
            before,
            after,
            made,
        };
        // A plain change: its own transition, or nothing.
        assert_eq!(
            announcement(&c(t(true, 5), t(false, 9), true), &[]),
            Some(Change::Offline)
        );
        assert_eq!(announcement(&c(t(true, 5), t(true, 5), false), &[]), None);
        // Our late close emptied the login and nobody came since: the repair announces it.
        assert_eq!(
            announcement(&c(t(false, 7), t(false, 7), false), &[7]),
            Some(Change::Offline)
        );
        // Another node emptied it after our late close (and announced it): nothing.
        assert_eq!(
            announcement(&c(t(false, 8), t(false, 8), false), &[7]),
            None
        );
        // Our late open made the login online, unannounced; the repair closes it again: the
        // watchers never saw it online, nothing to say.
        assert_eq!(announcement(&c(t(true, 7), t(false, 9), true), &[7]), None);
        // Our late close never committed; the repair's close is the transition.
        assert_eq!(
            announcement(&c(t(true, 3), t(false, 9), true), &[7]),
            Some(Change::Offline)
        );
        // Our late open made the login online and it still is: announced by the repair.
        assert_eq!(
            announcement(&c(t(true, 7), t(true, 7), false), &[7]),
            Some(Change::Online)
        );
        // Two late changes of ours, both committed, both transitions: the repair announces
        // the state of the second (the true one), possibly once more than needed.
        assert_eq!(
            announcement(&c(t(false, 8), t(false, 8), false), &[7, 8]),
            Some(Change::Offline)
        );
        assert_eq!(
            announcement(&c(t(true, 8), t(true, 8), false), &[7, 8]),
            Some(Change::Online)
        );
    }
}
