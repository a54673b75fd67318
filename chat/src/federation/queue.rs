//! Group commit for the outbound queue: one task applies queue writes in batches (one
//! transaction, one fsync for everything that arrived meanwhile), like the message writer of
//! `db::commit`, and keeps item counts for its bounds: per peer, per local sender (one user
//! cannot fill the queue with thousands of made-up domains) and the number of peers. On
//! PostgreSQL several nodes add to one queue, so the bounds are counted from the table inside
//! each batch's transaction (`Db::federation_apply`) instead of in this node's memory.

use crate::db::{Db, DbError, QueueBound, QueueBounds, QueueDone, QueueWrite};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Most writes waiting for the task.
const CHANNEL: usize = 4096;
/// Most writes in one transaction.
const BATCH: usize = 512;

/// Why a write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The peer's queue holds its maximum.
    #[error("the peer's queue is full")]
    Full,
    /// The sender has the most items queued a sender may have.
    #[error("the sender's queued items are at their maximum")]
    SenderFull,
    /// Items are queued for the most peers there may be.
    #[error("items are queued for too many peers")]
    TooManyPeers,
    /// The database failed (or the task stopped).
    #[error("federation queue: {0}")]
    Db(String),
}

enum Op {
    Write(
        QueueWrite,
        Option<oneshot::Sender<Result<QueueDone, QueueError>>>,
    ),
    /// Items (peer, sender) that left the queue some other way (expiry).
    Forget(Vec<(String, String)>),
}

/// Handle to the queue writer.
#[derive(Clone)]
pub(crate) struct QueueWriter {
    tx: mpsc::Sender<Op>,
}

impl QueueWriter {
    /// Starts the task with the stored counts.
    pub(crate) async fn start(db: Db, limits: Limits) -> Result<QueueWriter, DbError> {
        let mut counts = Counts::default();
        let in_table = db.backend_name() == "postgres";
        let rows = if in_table {
            Vec::new()
        } else {
            db.federation_counts_by_sender().await?
        };
        for (peer, sender, n) in rows {
            let n = n.max(0) as u64;
            if !is_reply(&sender) {
                *counts.peers.entry(peer.clone()).or_default() += n;
            }
            if !sender.is_empty() && !is_reply(&sender) {
                *counts
                    .sender_peers
                    .entry(sender.clone())
                    .or_default()
                    .entry(peer.clone())
                    .or_default() += n;
            }
            if !sender.is_empty() {
                *counts.senders.entry(sender).or_default() += n;
            }
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run(db, rx, counts, limits, in_table));
        Ok(QueueWriter { tx })
    }

    /// Applies a write once committed.
    pub(crate) async fn write(&self, w: QueueWrite) -> Result<QueueDone, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Write(w, Some(reply)))
            .await
            .map_err(|_| QueueError::Db("stopped".into()))?;
        rx.await.map_err(|_| QueueError::Db("stopped".into()))?
    }

    /// Queues a write without waiting (an acknowledged item's removal: if it is lost in a
    /// crash, the item is sent again and the peer acknowledges the duplicate).
    pub(crate) async fn write_detached(&self, w: QueueWrite) {
        let _ = self.tx.send(Op::Write(w, None)).await;
    }

    /// Items (peer, sender) removed by expiry.
    pub(crate) async fn forget(&self, items: Vec<(String, String)>) {
        let _ = self.tx.send(Op::Forget(items)).await;
    }
}

/// The queue's bounds (0 = unlimited).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Items per peer.
    pub per_peer: u64,
    /// Items per local sender.
    pub per_sender: u64,
    /// Peers with items.
    pub peers: usize,
    /// Peers one local sender may have items for (well below `peers`: one account cannot
    /// take every peer place with made-up domains).
    pub peers_per_sender: u64,
}

/// Items queued per peer and per sender (entries at zero are removed).
#[derive(Default)]
struct Counts {
    peers: HashMap<String, u64>,
    senders: HashMap<String, u64>,
    /// Items per peer of each local sender (not replies).
    sender_peers: HashMap<String, HashMap<String, u64>>,
    /// Reply items per peer: each such peer gets a dialer, so their number is bounded too
    /// (by `peers`, apart from local senders' peers: replies take no room from them).
    reply_peers: HashMap<String, u64>,
}

/// Whether an item is a reply to the peer's own packets (budget `s2s:<peer>`): bounded by that
/// budget only, it neither counts toward the peer's queue cap nor toward the peers with items,
/// so a peer's requests cannot take room from (or make room for) local senders' messages.
pub(crate) fn is_reply(sender: &str) -> bool {
    sender.starts_with(REPLY_BUDGET)
}

/// The prefix of the budget of replies to a peer (`s2s:<peer>`, PROTOCOL.md §12.6).
pub(crate) const REPLY_BUDGET: &str = "s2s:";

/// The budget of replies to `peer`: one per registrable domain (`s2s:evil.example` for every
/// `*.evil.example`), so a zone's many names share one.
pub(crate) fn reply_budget(peer: &str) -> String {
    format!("{REPLY_BUDGET}{}", super::domain::registrable(peer))
}

impl Counts {
    /// Admits one more item or says which bound it hits.
    fn admit(&mut self, peer: &str, sender: &str, l: Limits) -> Result<(), QueueError> {
        let reply = is_reply(sender);
        let p = self.peers.get(peer).copied().unwrap_or(0);
        if !reply && l.per_peer > 0 && p >= l.per_peer {
            return Err(QueueError::Full);
        }
        if !reply && p == 0 && l.peers > 0 && self.peers.len() >= l.peers {
            return Err(QueueError::TooManyPeers);
        }
        if reply
            && l.peers > 0
            && !self.reply_peers.contains_key(peer)
            && self.reply_peers.len() >= l.peers
        {
            return Err(QueueError::TooManyPeers);
        }
        let own = !sender.is_empty() && !reply;
        if own && l.peers_per_sender > 0 {
            if let Some(peers) = self.sender_peers.get(sender) {
                if !peers.contains_key(peer) && peers.len() as u64 >= l.peers_per_sender {
                    return Err(QueueError::TooManyPeers);
                }
            }
        }
        if !sender.is_empty() {
            let s = self.senders.get(sender).copied().unwrap_or(0);
            if l.per_sender > 0 && s >= l.per_sender {
                return Err(QueueError::SenderFull);
            }
            *self.senders.entry(sender.to_owned()).or_default() += 1;
        }
        if own {
            *self
                .sender_peers
                .entry(sender.to_owned())
                .or_default()
                .entry(peer.to_owned())
                .or_default() += 1;
        }
        if reply {
            *self.reply_peers.entry(peer.to_owned()).or_default() += 1;
        } else {
            *self.peers.entry(peer.to_owned()).or_default() += 1;
        }
        Ok(())
    }

    /// One item of `peer` from `sender` left the queue.
    fn release(&mut self, peer: &str, sender: &str) {
        fn dec(map: &mut HashMap<String, u64>, k: &str) {
            if let Some(c) = map.get_mut(k) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    map.remove(k);
                }
            }
        }
        if is_reply(sender) {
            dec(&mut self.reply_peers, peer);
        } else {
            dec(&mut self.peers, peer);
        }
        if !sender.is_empty() {
            dec(&mut self.senders, sender);
        }
        if !sender.is_empty() && !is_reply(sender) {
            if let Some(peers) = self.sender_peers.get_mut(sender) {
                dec(peers, peer);
                if peers.is_empty() {
                    self.sender_peers.remove(sender);
                }
            }
        }
    }
}

/// `in_table`: the bounds are checked by the database (PostgreSQL), `counts` stay empty.
async fn run(
    db: Db,
    mut rx: mpsc::Receiver<Op>,
    mut counts: Counts,
    limits: Limits,
    in_table: bool,
) {
    let bounds = QueueBounds {
        per_peer: limits.per_peer,
        per_sender: limits.per_sender,
        peers: limits.peers as u64,
        peers_per_sender: limits.peers_per_sender,
    };
    let mut writes = Vec::with_capacity(BATCH);
    let mut replies = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Forget(items) => {
                    for (peer, sender) in items {
                        counts.release(&peer, &sender);
                    }
                }
                Op::Write(w, reply) => {
                    if let (QueueWrite::Add { peer, sender, .. }, false) = (&w, in_table) {
                        if let Err(e) = counts.admit(peer, sender, limits) {
                            if let Some(r) = reply {
                                let _ = r.send(Err(e));
                            }
                            next = if writes.len() < BATCH {
                                rx.try_recv().ok()
                            } else {
                                None
                            };
                            continue;
                        }
                    }
                    writes.push(w);
                    replies.push(reply);
                }
            }
            if writes.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if writes.is_empty() {
            continue;
        }
        let result = db.federation_apply(&writes, bounds).await;
        match result {
            Ok(done) => {
                for ((w, d), r) in writes.iter().zip(done).zip(replies.drain(..)) {
                    // A removal that found its item frees a place.
                    match (w, &d) {
                        (QueueWrite::Remove { peer, .. }, QueueDone::Removed(Some(item))) => {
                            counts.release(peer, &item.sender);
                        }
                        // The items a newer one replaced left the queue.
                        (QueueWrite::Add { peer, .. }, QueueDone::Replaced(items)) => {
                            for item in items {
                                counts.release(peer, &item.sender);
                            }
                        }
                        _ => {}
                    }
                    if let Some(r) = r {
                        let _ = r.send(match d {
                            QueueDone::Refused(QueueBound::PerPeer) => Err(QueueError::Full),
                            QueueDone::Refused(QueueBound::PerSender) => {
                                Err(QueueError::SenderFull)
                            }
                            QueueDone::Refused(QueueBound::Peers | QueueBound::SenderPeers) => {
                                Err(QueueError::TooManyPeers)
                            }
                            d => Ok(d),
                        });
                    }
                }
            }
            Err(e) => {
                warn!("federation queue: {e}");
                for w in &writes {
                    if let QueueWrite::Add { peer, sender, .. } = w {
                        counts.release(peer, sender);
                    }
                }
                for r in replies.drain(..).flatten() {
                    let _ = r.send(Err(QueueError::Db(e.to_string())));
                }
            }
        }
        writes.clear();
    }
}

#[cfg(test)]
mod cluster_tests;
