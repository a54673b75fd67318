//! Group commit for the outbound queue: one task applies queue writes in batches (one
//! transaction, one fsync for everything that arrived meanwhile), like the message writer of
//! `db::commit`, and keeps each peer's item count for the per-peer bound.

use crate::db::{Db, DbError, QueueDone, QueueWrite};
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
    /// The database failed (or the task stopped).
    #[error("federation queue: {0}")]
    Db(String),
}

enum Op {
    Write(
        QueueWrite,
        Option<oneshot::Sender<Result<QueueDone, QueueError>>>,
    ),
    /// `n` items of `peer` left the queue some other way (expiry).
    Forget(String, u64),
}

/// Handle to the queue writer.
#[derive(Clone)]
pub(crate) struct QueueWriter {
    tx: mpsc::Sender<Op>,
}

impl QueueWriter {
    /// Starts the task with the stored counts; `max` bounds each peer (0 = unlimited).
    pub(crate) async fn start(db: Db, max: u64) -> Result<QueueWriter, DbError> {
        let counts: HashMap<String, u64> = db
            .federation_counts()
            .await?
            .into_iter()
            .map(|(p, n)| (p, n.max(0) as u64))
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run(db, rx, counts, max));
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

    /// Items removed by expiry.
    pub(crate) fn forget(&self, peer: String, n: u64) {
        let _ = self.tx.try_send(Op::Forget(peer, n));
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Op>, mut counts: HashMap<String, u64>, max: u64) {
    let mut writes = Vec::with_capacity(BATCH);
    let mut replies = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Forget(peer, n) => {
                    if let Some(c) = counts.get_mut(&peer) {
                        *c = c.saturating_sub(n);
                    }
                }
                Op::Write(w, reply) => {
                    if let QueueWrite::Add { peer, .. } = &w {
                        let c = counts.entry(peer.clone()).or_default();
                        if max > 0 && *c >= max {
                            if let Some(r) = reply {
                                let _ = r.send(Err(QueueError::Full));
                            }
                            next = if writes.len() < BATCH {
                                rx.try_recv().ok()
                            } else {
                                None
                            };
                            continue;
                        }
                        *c += 1;
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
        let result = db.federation_apply(&writes).await;
        match result {
            Ok(done) => {
                for ((w, d), r) in writes.iter().zip(done).zip(replies.drain(..)) {
                    // A removal that found its item frees a place.
                    if let (QueueWrite::Remove { peer, .. }, QueueDone::Removed(Some(_))) = (w, &d)
                    {
                        if let Some(c) = counts.get_mut(peer) {
                            *c = c.saturating_sub(1);
                        }
                    }
                    if let Some(r) = r {
                        let _ = r.send(Ok(d));
                    }
                }
            }
            Err(e) => {
                warn!("federation queue: {e}");
                for w in &writes {
                    if let QueueWrite::Add { peer, .. } = w {
                        if let Some(c) = counts.get_mut(peer) {
                            *c = c.saturating_sub(1);
                        }
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
