//! Who is online on the other nodes, as this node knows it (for `Hub::is_online`): kept from
//! the presence notifications, and from `cluster_presence`: all of it when the listener
//! (re)connects, the logins changed since the last read on every poll tick (see
//! `fanout::Reader`, `nodes::presence_since`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Who is online on the other nodes: login → nodes.
#[derive(Debug, Default)]
pub(crate) struct Mirror(Mutex<HashMap<String, HashSet<i64>>>);

impl Mirror {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<i64>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn online(&self, login: &str) -> bool {
        self.lock().contains_key(login)
    }

    pub(super) fn set(&self, login: &str, node: i64, on: bool) {
        let mut m = self.lock();
        if on {
            m.entry(login.to_owned()).or_default().insert(node);
        } else if let Some(nodes) = m.get_mut(login) {
            nodes.remove(&node);
            if nodes.is_empty() {
                m.remove(login);
            }
        }
    }

    pub(super) fn drop_nodes(&self, dead: &[i64]) {
        self.lock().retain(|_, nodes| {
            nodes.retain(|n| !dead.contains(n));
            !nodes.is_empty()
        });
    }

    /// Replaces what is known of `logins` with `rows` (theirs).
    pub(super) fn update(&self, logins: &[String], rows: Vec<(String, i64)>) {
        let mut m = self.lock();
        for login in logins {
            m.remove(login);
        }
        for (login, node) in rows {
            m.entry(login).or_default().insert(node);
        }
    }

    pub(super) fn replace(&self, rows: Vec<(String, i64)>) {
        let mut m = HashMap::<String, HashSet<i64>>::new();
        for (login, node) in rows {
            m.entry(login).or_default().insert(node);
        }
        *self.lock() = m;
    }
}
