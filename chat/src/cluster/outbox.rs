//! What this node announces to the others: coalesced positions and a bounded queue of live
//! packets and presence notes, sent on [`CHANNEL`] in order by [`send_loop`] (payload formats
//! in `super::fanout`).

use super::fanout::{within, Positions, CHANNEL, INLINE_MAX, MAX_BACKOFF};
use super::stages::unix_us;
use super::NodeId;
use bytes::Bytes;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Live packets waiting to be published; more are dropped (like a slow client's, with a
/// warning): they are never stored anyway.
const OUTBOX: usize = 4096;

/// A notice waiting to be sent.
#[derive(Debug)]
enum Out {
    /// Sent as it is.
    Payload(String),
    /// A live packet too large for a payload: stored in `cluster_events` first.
    Large { login: String, bytes: Bytes },
}

/// What this node sends: coalesced positions and a bounded queue of other notices.
#[derive(Debug)]
pub(crate) struct Outbox {
    node: NodeId,
    /// This node's batches (what the commit writer tells through this outbox).
    pub(crate) own: Arc<super::own::OwnBatches>,
    /// Positions to announce, and when the oldest of their commits was told (µs since the
    /// epoch, see `super::stages`).
    heads: Mutex<Option<(Positions, u64)>>,
    wake: Notify,
    queue: mpsc::Sender<Out>,
}

/// The receiving end of an [`Outbox`], for [`send_loop`].
#[derive(Debug)]
pub(crate) struct OutboxRx(mpsc::Receiver<Out>);

impl Outbox {
    /// A new outbox and its receiving end.
    pub(crate) fn new(node: NodeId) -> (Arc<Outbox>, OutboxRx) {
        let (queue, rx) = mpsc::channel(OUTBOX);
        let o = Outbox {
            node,
            own: Arc::default(),
            heads: Mutex::new(None),
            wake: Notify::new(),
            queue,
        };
        (Arc::new(o), OutboxRx(rx))
    }

    /// A batch was committed up to `heads`: announced once the sender is free (the positions
    /// of batches committed meanwhile go out in the same NOTIFY).
    pub(crate) fn committed(&self, heads: Positions) {
        let mut h = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        h.get_or_insert_with(|| (Positions::default(), unix_us()))
            .0
            .raise(&heads);
        drop(h);
        self.wake.notify_one();
    }

    fn take_heads(&self) -> Option<(Positions, u64)> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn queue(&self, out: Out) -> bool {
        match self.queue.try_send(out) {
            Ok(()) => true,
            Err(e) => {
                warn!("cluster outbox full: a live packet is dropped ({e})");
                false
            }
        }
    }

    /// Whether the outbox has room for `n` more packets now.
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.queue.capacity() >= n
    }

    /// Publishes a live packet for `login`'s sessions on the other nodes; false if it was
    /// dropped (the outbox was full).
    pub(crate) fn live(&self, login: &str, bytes: &Bytes) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(text) if text.len() <= INLINE_MAX && !text.contains('\0') => {
                self.queue(Out::Payload(format!("e {} {login} {text}", self.node)))
            }
            _ => self.queue(Out::Large {
                login: login.to_owned(),
                bytes: bytes.clone(),
            }),
        }
    }

    /// `login` got its first (`on`) or lost its last session on this node.
    pub(crate) fn presence(&self, login: &str, on: bool) {
        self.queue(Out::Payload(format!(
            "s {} {login} {}",
            self.node,
            u8::from(on)
        )));
    }

    /// `nodes` were declared dead.
    pub(crate) fn dead(&self, nodes: &[i64]) {
        let mut s = format!("d {}", self.node);
        for n in nodes {
            s.push_str(&format!(" {n:x}"));
        }
        self.queue(Out::Payload(s));
    }
}

/// Sends `payload` on [`CHANNEL`], waiting at most `limit`.
pub(crate) async fn notify(
    pool: &PgPool,
    payload: &str,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    // Its own statement, after the commit: no database-wide lock held across a WAL flush.
    // A NOTIFY gets a transaction id, so with `synchronous_commit` on its commit waited for
    // a WAL flush of its own (an fsync per announcement: 2-4 ms, up to 36 ms under load,
    // measured with `super::stages`) although it writes nothing worth keeping: what it
    // announces is already durable, and a notice lost in a crash is caught up from positions
    // like any other. So this one transaction commits asynchronously (`true`: local to it).
    let sent =
        sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(pool);
    within(limit, sent).await?;
    Ok(())
}

/// Sends the outbox's notices in order until `stop`. Positions first: they are what other
/// nodes must not miss for long; a failed announcement is retried. A failed live packet is
/// logged and dropped (live packets are live only).
pub(crate) async fn send_loop(
    pool: PgPool,
    outbox: Arc<Outbox>,
    mut rx: OutboxRx,
    statement: Duration,
    stop: CancellationToken,
) {
    let node = outbox.node;
    let mut backoff = Duration::from_millis(20);
    loop {
        if let Some((h, stamp)) = outbox.take_heads() {
            let [a, b, c, d] = h.0;
            match notify(
                &pool,
                &format!("p {node} {a} {b} {c} {d} {stamp}"),
                statement,
            )
            .await
            {
                Ok(()) => {
                    debug!(
                        target: "msim_chat::cluster::stages",
                        notify_us = unix_us().saturating_sub(stamp),
                        "positions announced"
                    );
                    backoff = Duration::from_millis(20);
                }
                Err(e) => {
                    // Kept (coalesced with what comes meanwhile, so nothing grows) and sent
                    // again shortly: the other nodes' timers would find the items too, but
                    // later.
                    warn!("cluster: announcing positions: {e}; retrying");
                    outbox.committed(h);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        }
        let out = tokio::select! {
            _ = stop.cancelled() => return,
            _ = outbox.wake.notified() => continue,
            out = rx.0.recv() => match out {
                Some(out) => out,
                None => return,
            },
        };
        let sent =
            match out {
                Out::Payload(p) => notify(&pool, &p, statement).await,
                Out::Large { login, bytes } => {
                    let id: Result<i64, sqlx::Error> = within(statement, sqlx::query_scalar(
                    "INSERT INTO cluster_events (origin, login, packet) VALUES ($1, $2, $3) \
                     RETURNING id",
                )
                .bind(node.0)
                .bind(&login)
                .bind(bytes.as_ref())
                .fetch_one(&pool))
                .await;
                    match id {
                        Ok(id) => notify(&pool, &format!("x {node} {id}"), statement).await,
                        Err(e) => Err(e),
                    }
                }
            };
        if let Err(e) = sent {
            warn!("cluster: a live packet is lost: {e}");
        }
    }
}
