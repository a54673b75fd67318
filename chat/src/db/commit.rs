//! Group commit: one writer task owns all writes. Requests arrive over a bounded mpsc; the task
//! takes everything already queued (up to [`MAX_BATCH`]), applies it in one transaction, commits
//! once, then answers each waiter through its oneshot. Many concurrent senders therefore share
//! one fsync, and a reply (e.g. `MESSAGE-SENT`) is only sent after the data is durable.
//!
//! A failed commit (full disk, I/O error) fails every operation of its batch and the writer goes
//! on with the next one, so writes succeed again as soon as the disk has room. Below the
//! free-space watermark, writes that store new data are refused before they reach SQLite.

use crate::db::space::Watermark;
use crate::db::{Db, DbError, Outcome, PrivacyOp, WriteOp};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

/// Told, after each durable batch that stored items of the streams sessions load at login,
/// the highest sequence number it stored in each (messages, receipts, offers, notices; 0:
/// none). The cluster announces them to the other nodes (`cluster::Cluster::committed`).
///
/// Around every batch it is also told when the batch starts and when its outcome is settled,
/// with the items of a batch whose commit outcome stayed unknown: nobody here pushed them
/// (the writer answered "outcome unknown"), and the cluster's reader, which skips this
/// node's own items, pushes those among them that turn out stored.
pub(crate) trait CommitHook: Send + Sync + 'static {
    /// A batch was committed up to `heads`.
    fn committed(&self, heads: [i64; 4]);
    /// A batch is being applied.
    fn started(&self) {}
    /// The batch's outcome is settled: `heads` as for [`CommitHook::committed`] (zeros if it
    /// failed); `lows`: the lowest sequence number it stored in each stream (0: none, or it
    /// did not commit); `in_doubt`: the (stream, sequence number) of the items it would have
    /// stored if its outcome is unknown (none otherwise).
    fn settled(&self, _heads: [i64; 4], _lows: [i64; 4], _in_doubt: Vec<(usize, i64)>) {}
}

/// Where the writer finds its [`CommitHook`] once it is set (the cluster starts after the
/// writer).
pub(crate) type HookSlot = Arc<OnceLock<Arc<dyn CommitHook>>>;

/// Most operations in one transaction.
pub(crate) const MAX_BATCH: usize = 2048;
/// Queue depth in front of the writer (back-pressure beyond it).
pub(crate) const QUEUE: usize = 8192;
/// Receipts to delete that waited for room in a full queue (more are dropped: a receipt
/// not deleted is only shown again at its sender's next login).
const DEFERRED_RECEIPTS: usize = 65_536;

struct Request {
    op: WriteOp,
    reply: Option<oneshot::Sender<Result<Outcome, DbError>>>,
}

/// Handle used to submit writes.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Request>,
    /// Receipt deletions that found the queue full: the writer adds them to its next batch.
    deferred: Arc<std::sync::Mutex<Vec<i64>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the writer task. It stops once every `Writer` handle is dropped, after
    /// committing what was queued; the returned handle completes then.
    pub(crate) fn start(
        db: Db,
        space: Watermark,
        hook: HookSlot,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let deferred = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(run(db, space, hook, rx, deferred.clone()));
        (Writer { tx, deferred }, task)
    }

    /// Submits a write and waits until it is committed.
    pub(crate) async fn write(&self, op: WriteOp) -> Result<Outcome, DbError> {
        self.submit(op).await?.await
    }

    /// Queues a write (waiting only for room in the writer's queue) and returns a handle that
    /// completes once the write is committed. Lets a session pipeline many writes.
    pub(crate) async fn submit(&self, op: WriteOp) -> Result<Pending, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                op,
                reply: Some(reply),
            })
            .await
            .map_err(|_| DbError::WriterGone)?;
        Ok(Pending(rx))
    }

    /// Submits a write without waiting for it (best effort, e.g. deleting delivered receipts).
    /// Receipt deletions that find the queue full wait beside it (bounded) for the next batch:
    /// the queue is full precisely when many receipts are delivered.
    pub(crate) fn write_detached(&self, op: WriteOp) {
        match self.tx.try_send(Request { op, reply: None }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Request {
                op: WriteOp::DeleteReceipts(seqs),
                ..
            })) => {
                let mut d = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
                let room = DEFERRED_RECEIPTS.saturating_sub(d.len());
                if seqs.len() > room {
                    debug!(
                        dropped = seqs.len() - room,
                        "deferred receipt deletions full"
                    );
                }
                d.extend(seqs.into_iter().take(room));
            }
            Err(e) => debug!("detached write dropped: {e}"),
        }
    }
}

/// A submitted write; resolves to its outcome once committed.
#[derive(Debug)]
pub(crate) struct Pending(oneshot::Receiver<Result<Outcome, DbError>>);

impl Pending {
    /// The outcome if the write has already been committed, without waiting.
    pub(crate) fn try_take(&mut self) -> Option<Result<Outcome, DbError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(DbError::WriterGone)),
        }
    }
}

impl std::future::Future for Pending {
    type Output = Result<Outcome, DbError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(DbError::WriterGone)))
    }
}

/// Which stream an op's stored item belongs to, if it stores one (see [`CommitHook`]).
fn stream_of(op: &WriteOp) -> Option<usize> {
    match op {
        WriteOp::InsertMessage(_) => Some(0),
        WriteOp::MarkRead { .. } => Some(1),
        WriteOp::Privacy(PrivacyOp::CreateOffer { .. }) => Some(2),
        WriteOp::AddNotices(_)
        | WriteOp::SetOfferHash { .. }
        | WriteOp::AnswerWithResults { .. } => Some(3),
        _ => None,
    }
}

/// The highest sequence number of each stream among a batch's results.
fn heads(streams: &[Option<usize>], results: &[Result<Outcome, DbError>]) -> [i64; 4] {
    let mut heads = [0i64; 4];
    for (s, r) in streams.iter().zip(results) {
        let (Some(s), Ok(o)) = (s, r) else { continue };
        let top = item_seqs(o).max().unwrap_or(0);
        heads[*s] = heads[*s].max(top);
    }
    heads
}

/// The lowest sequence number of each stream among a batch's results (0: none).
fn lows(streams: &[Option<usize>], results: &[Result<Outcome, DbError>]) -> [i64; 4] {
    let mut lows = [0i64; 4];
    for (s, r) in streams.iter().zip(results) {
        let (Some(s), Ok(o)) = (s, r) else { continue };
        if let Some(low) = item_seqs(o).filter(|seq| *seq > 0).min() {
            lows[*s] = if lows[*s] == 0 {
                low
            } else {
                lows[*s].min(low)
            };
        }
    }
    lows
}

/// The sequence numbers of the stored items an outcome reports.
fn item_seqs(o: &Outcome) -> Box<dyn Iterator<Item = i64> + '_> {
    match o {
        Outcome::Stored(seq) | Outcome::Hashed { seq, .. } => Box::new(std::iter::once(*seq)),
        Outcome::Read { receipt, .. } => Box::new(std::iter::once(*receipt)),
        Outcome::Notices(seqs) | Outcome::AnsweredWithResults(_, seqs) => {
            Box::new(seqs.iter().copied())
        }
        _ => Box::new(std::iter::empty()),
    }
}

/// The (stream, sequence number) of every item a batch in doubt would have stored.
fn in_doubt_items(streams: &[Option<usize>], would: &[Option<Outcome>]) -> Vec<(usize, i64)> {
    let mut items = Vec::new();
    for (s, o) in streams.iter().zip(would) {
        if let (Some(s), Some(o)) = (s, o) {
            items.extend(item_seqs(o).filter(|seq| *seq > 0).map(|seq| (*s, seq)));
        }
    }
    items
}

async fn run(
    db: Db,
    mut space: Watermark,
    hook: HookSlot,
    mut rx: mpsc::Receiver<Request>,
    deferred: Arc<std::sync::Mutex<Vec<i64>>>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let waiting = std::mem::take(&mut *deferred.lock().unwrap_or_else(|e| e.into_inner()));
        if !waiting.is_empty() {
            batch.push(Request {
                op: WriteOp::DeleteReceipts(waiting),
                reply: None,
            });
        }
        let low = space.low();
        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            if low && r.op.grows_storage() {
                if let Some(reply) = r.reply {
                    let _ = reply.send(Err(DbError::StorageFull));
                }
            } else {
                ops.push(r.op);
                replies.push(r.reply);
            }
        }
        let n = ops.len();
        if n == 0 {
            continue;
        }
        let streams: Vec<Option<usize>> = match hook.get() {
            Some(_) => ops.iter().map(stream_of).collect(),
            None => Vec::new(),
        };
        if let Some(hook) = hook.get() {
            hook.started();
        }
        let started = std::time::Instant::now();
        let applied = db.apply_batch(ops).await;
        let us = started.elapsed().as_micros() as u64;
        if let Some(hook) = hook.get() {
            match &applied {
                Ok(results) => hook.settled(
                    heads(&streams, results),
                    lows(&streams, results),
                    Vec::new(),
                ),
                Err(DbError::InDoubt(_, would)) => {
                    let items = in_doubt_items(&streams, &would.0);
                    let mut top = [0; 4];
                    for (s, seq) in &items {
                        top[*s] = top[*s].max(*seq);
                    }
                    hook.settled(top, [0; 4], items)
                }
                Err(_) => hook.settled([0; 4], [0; 4], Vec::new()),
            }
        }
        match applied {
            Ok(results) => {
                if let Some(hook) = hook.get() {
                    let heads = heads(&streams, &results);
                    if heads.iter().any(|h| *h > 0) {
                        hook.committed(heads);
                    }
                }
                for (reply, res) in replies.into_iter().zip(results) {
                    if let Some(reply) = reply {
                        let _ = reply.send(res);
                    }
                }
            }
            Err(e) => {
                error!(ops = n, "group commit failed: {e}");
                space.recheck();
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))));
                }
            }
        }
        debug!(ops = n, us, "group commit");
        if let Err(e) = db.restart_wal_if_large().await {
            debug!("WAL restart: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The items of a batch in doubt are every stored item its outcomes name, in their
    /// streams; ops that store nothing, or failed, name none.
    #[test]
    fn items_of_a_batch_in_doubt() {
        let streams = [Some(0), None, Some(3), Some(0), Some(1)];
        let would = [
            Some(Outcome::Stored(7)),
            Some(Outcome::Done),
            Some(Outcome::Notices(vec![4, 5])),
            None,
            Some(Outcome::Done),
        ];
        assert_eq!(
            in_doubt_items(&streams, &would),
            vec![(0, 7), (3, 4), (3, 5)]
        );
    }
}
