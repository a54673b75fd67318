//! The presence reconcile ([`Presence::reconcile`]) in a task of its own, started after each
//! heartbeat that went through. After a re-registration it rewrites every local login's row
//! (a few round trips each, each up to a statement's limit): inline, it would hold this node's
//! heartbeats past the node timeout, get the node reaped again, and make its users flap.

use super::presence::Presence;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The heartbeat's side: asks for reconciles, collects what they found.
#[derive(Default)]
pub(super) struct Reconciler {
    due: Notify,
    /// Logins found (online, offline) and not yet taken by the heartbeat (at most a few
    /// reconciles' worth: the heartbeat takes them every beat).
    found: Mutex<(Vec<String>, Vec<String>)>,
}

impl Reconciler {
    /// A heartbeat went through: reconcile (once more after the running one, if any).
    pub(super) fn due(&self) {
        self.due.notify_one();
    }

    /// What the reconciles found since the last call: (online, offline).
    pub(super) fn take(&self) -> (Vec<String>, Vec<String>) {
        std::mem::take(&mut *self.found.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reconciles whenever asked, until `stop`.
    pub(super) async fn run(self: Arc<Self>, presence: Arc<Presence>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.due.notified() => {}
            }
            let (online, offline) = tokio::select! {
                _ = stop.cancelled() => return,
                r = presence.reconcile() => r,
            };
            let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            found.0.extend(online);
            found.1.extend(offline);
        }
    }
}
