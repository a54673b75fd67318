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

use super::fanout::{within, Outbox};
use super::{nodes, NodeId};
use crate::hub::Hub;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

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
    unknown: Mutex<HashSet<String>>,
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
            unknown: Mutex::new(HashSet::new()),
            locks: Mutex::new(HashMap::new()),
            suspects: Mutex::new(Some(HashSet::new())),
        }
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
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
        // After a failed change nothing is known: write, and announce from the counts alone
        // (the failed change announced nothing).
        let repair = self.unknown().contains(login);
        if !repair && want == self.stored().contains(login) {
            return None;
        }
        let done = if want {
            let opened = nodes::session_opened(&self.pool, self.node, login, self.statement);
            within(self.statement, opened).await.map(|first| {
                self.stored().insert(login.to_owned());
                first.then_some(Change::Online)
            })
        } else {
            let closed =
                nodes::session_closed(&self.pool, self.node, login, repair, self.statement);
            within(self.statement, closed).await.map(|last| {
                self.stored().remove(login);
                last.then_some(Change::Offline)
            })
        };
        match done {
            Ok(change) => {
                if repair {
                    self.unknown().remove(login);
                }
                self.outbox.presence(login, want);
                change
            }
            Err(e) => {
                warn!(login, "cluster presence: {e}");
                self.unknown().insert(login.to_owned());
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
            act.extend(self.unknown().iter().cloned());
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
