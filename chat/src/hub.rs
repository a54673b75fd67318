//! Registry of live sessions: login → the sessions logged in as that user, each with a bounded
//! outgoing queue. Fan-out encodes a packet once and `try_send`s the bytes to every session; a
//! session whose queue is full is evicted (its queue is closed, the session sees that and
//! disconnects) instead of buffering without bound.

use bytes::Bytes;
use msim_shared::Packet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tracing::warn;

/// A stored stream whose items a session also loads from the database at login. Each live item
/// of such a stream carries its sequence number, so a session drops the live copies of items it
/// already sent from its login backlog (PROTOCOL.md §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Messages to the user (`messages.seq`).
    Messages = 0,
    /// Read receipts for the user (`receipts.seq`).
    Receipts = 1,
    /// File offers to the user (`offers.rowid`).
    Offers = 2,
    /// Stored file results for the user (`notices.seq`).
    Notices = 3,
}

/// Number of [`Stream`]s.
pub(crate) const STREAMS: usize = 4;

/// One queued packet for a session.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// The stored item's stream and sequence number; `None` for packets that are never stored.
    pub(crate) seq: Option<(Stream, i64)>,
    /// The encoded packet.
    pub(crate) bytes: Bytes,
}

struct Slot {
    id: u64,
    tx: Option<mpsc::Sender<Item>>,
}

/// The other nodes of a cluster (`crate::cluster`), as the hub sees them.
pub(crate) trait Remote: Send + Sync + 'static {
    /// Whether `login` has a session on another node.
    fn online_elsewhere(&self, login: &str) -> bool;
    /// Hands a live-only packet to `login`'s sessions on the other nodes: at once when it is
    /// known online there, else once the cluster knows whether it just logged in there
    /// (`cluster::mirror`). (Stored items reach them through the store, by sequence number.)
    fn offer(&self, login: &str, bytes: &Bytes);
}

/// The session registry.
#[derive(Default)]
pub(crate) struct Hub {
    // A std mutex: every critical section is a short map operation, never held across await.
    users: Mutex<HashMap<String, Vec<Slot>>>,
    next_id: AtomicU64,
    /// Set once when this node is part of a cluster.
    remote: OnceLock<Arc<dyn Remote>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

/// Encodes a packet once for fan-out.
pub(crate) fn encode(p: &Packet) -> Bytes {
    Bytes::from(p.to_wire())
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Slot>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; returns its id and whether it is the user's first live session.
    pub(crate) fn register(&self, login: &str, tx: mpsc::Sender<Item>) -> (u64, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut users = self.lock();
        let slots = users.entry(login.to_owned()).or_default();
        let first = slots.is_empty();
        slots.push(Slot { id, tx: Some(tx) });
        (id, first)
    }

    /// Removes a session; returns whether it was the user's last live session.
    pub(crate) fn unregister(&self, login: &str, id: u64) -> bool {
        let mut users = self.lock();
        let Some(slots) = users.get_mut(login) else {
            return false;
        };
        let before = slots.len();
        slots.retain(|s| s.id != id);
        let removed = slots.len() != before;
        if slots.is_empty() {
            users.remove(login);
            return removed;
        }
        false
    }

    /// Joins a cluster: presence and live packets then reach the other nodes too.
    pub(crate) fn set_remote(&self, remote: Arc<dyn Remote>) {
        if self.remote.set(remote).is_err() {
            warn!("hub: cluster already set");
        }
    }

    /// Whether the user has a live session (on any node of the cluster).
    pub(crate) fn is_online(&self, login: &str) -> bool {
        self.is_local(login) || self.remote.get().is_some_and(|r| r.online_elsewhere(login))
    }

    /// Whether a live packet for the user may reach a session: one on this node, or, in a
    /// cluster, maybe one on another (the mirror of the other nodes lags their logins; see
    /// [`Remote::offer`]). Pushes are skipped only when this is false.
    pub(crate) fn may_reach(&self, login: &str) -> bool {
        self.remote.get().is_some() || self.is_local(login)
    }

    /// Whether the user has a live session on this node.
    pub(crate) fn is_local(&self, login: &str) -> bool {
        self.lock().contains_key(login)
    }

    /// Logins with a session on this node.
    pub(crate) fn local_logins(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Sends to every session of `login` except `except`; returns how many got it.
    pub(crate) fn send_except(&self, login: &str, except: Option<u64>, bytes: &Bytes) -> usize {
        self.send_item(
            login,
            except,
            &Item {
                seq: None,
                bytes: bytes.clone(),
            },
        )
    }

    /// Sends a stored item (with its sequence number) to every session of `login` except
    /// `except`; returns how many got it.
    pub(crate) fn send_seq(
        &self,
        login: &str,
        except: Option<u64>,
        stream: Stream,
        seq: i64,
        bytes: &Bytes,
    ) -> usize {
        self.send_item(
            login,
            except,
            &Item {
                seq: Some((stream, seq)),
                bytes: bytes.clone(),
            },
        )
    }

    /// Sends an item to every session of `login` except `except` (a session of this node);
    /// returns how many sessions of this node got it. A live-only item (no sequence number)
    /// also goes to the user's sessions on the other nodes of a cluster.
    pub(crate) fn send_item(&self, login: &str, except: Option<u64>, item: &Item) -> usize {
        if item.seq.is_none() {
            if let Some(r) = self.remote.get() {
                r.offer(login, &item.bytes);
            }
        }
        self.deliver_local(login, except, item)
    }

    /// Sends an item to the sessions of `login` on this node only.
    pub(crate) fn deliver_local(&self, login: &str, except: Option<u64>, item: &Item) -> usize {
        let mut users = self.lock();
        let Some(slots) = users.get_mut(login) else {
            return 0;
        };
        let mut n = 0;
        for slot in slots.iter_mut().filter(|s| Some(s.id) != except) {
            let Some(tx) = &slot.tx else { continue };
            match tx.try_send(item.clone()) {
                Ok(()) => n += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        login,
                        session = slot.id,
                        "outgoing queue full: disconnecting slow reader"
                    );
                    slot.tx = None;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => slot.tx = None,
            }
        }
        n
    }

    /// The outgoing queues of `login`'s sessions on this node (for a sender that may wait
    /// for room: the cluster's reader catching up).
    pub(crate) fn local_queues(&self, login: &str) -> Vec<(u64, mpsc::Sender<Item>)> {
        let users = self.lock();
        let Some(slots) = users.get(login) else {
            return Vec::new();
        };
        slots
            .iter()
            .filter_map(|s| s.tx.clone().map(|tx| (s.id, tx)))
            .collect()
    }

    /// Disconnects session `id` of `login`, a reader too slow for its queue.
    pub(crate) fn evict(&self, login: &str, id: u64) {
        let mut users = self.lock();
        if let Some(slot) = users
            .get_mut(login)
            .and_then(|slots| slots.iter_mut().find(|s| s.id == id))
        {
            warn!(
                login,
                session = id,
                "outgoing queue full: disconnecting slow reader"
            );
            slot.tx = None;
        }
    }

    /// Sends to every session of `login`.
    pub(crate) fn send(&self, login: &str, bytes: &Bytes) -> usize {
        self.send_except(login, None, bytes)
    }

    /// Sends a packet to every session of `login`.
    pub(crate) fn send_packet(&self, login: &str, p: &Packet) -> usize {
        if !self.may_reach(login) {
            return 0;
        }
        self.send(login, &encode(p))
    }
}
