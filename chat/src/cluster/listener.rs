//! The listening side of the cross-node fan-out (`super::fanout`): the `LISTEN` session on
//! [`CHANNEL`], kept open and replaced when silent, and the parsing of what it hears.

use super::fanout::{within, Positions, CHANNEL, MAX_BACKOFF};
use super::stages::Heard;
use super::NodeId;
use bytes::Bytes;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A parsed notification from another node.
#[derive(Debug)]
pub(super) enum Note {
    /// The listener (re)connected: everything may have been missed.
    Connected,
    Live {
        login: String,
        bytes: Bytes,
    },
    LiveRow(i64),
    Presence {
        node: i64,
        login: String,
        on: bool,
    },
    Dead(Vec<i64>),
}

/// Positions announced by the other nodes, and when the oldest notice not yet read arrived.
#[derive(Debug, Default)]
pub(super) struct Announced {
    pub(super) heads: Positions,
    /// Taken by the reader when it starts reading (for the stage timings).
    pub(super) first: Option<Heard>,
}

/// Parses a payload; `None` for this node's own notices and for garbage.
fn parse(me: NodeId, payload: &str, heads: &Mutex<Announced>, wake: &Notify) -> Option<Note> {
    let (kind, rest) = payload.split_once(' ')?;
    let (node, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let node = i64::from_str_radix(node, 16).ok()?;
    // Our own notices are already applied here, except the leader's reaping (`d`), which
    // every mirror, the leader's too, must apply.
    if node == me.0 && kind != "d" {
        return None;
    }
    match kind {
        "p" => {
            let mut p = Positions::default();
            let mut it = rest.split(' ');
            for slot in p.0.iter_mut() {
                *slot = it.next()?.parse().ok()?;
            }
            // The sender's commit time, if it sends one (see `super::stages`).
            let stamp = it.next().and_then(|t| t.parse().ok());
            let mut a = heads.lock().unwrap_or_else(|e| e.into_inner());
            a.heads.raise(&p);
            a.first.get_or_insert_with(|| Heard::now(stamp));
            drop(a);
            wake.notify_one();
            None
        }
        "e" => {
            let (login, packet) = rest.split_once(' ')?;
            Some(Note::Live {
                login: login.to_owned(),
                bytes: Bytes::copy_from_slice(packet.as_bytes()),
            })
        }
        "x" => rest.parse().ok().map(Note::LiveRow),
        "s" => {
            let (login, on) = rest.split_once(' ')?;
            Some(Note::Presence {
                node,
                login: login.to_owned(),
                on: on == "1",
            })
        }
        "d" => {
            let nodes = rest
                .split(' ')
                .filter_map(|n| i64::from_str_radix(n, 16).ok());
            Some(Note::Dead(nodes.collect()))
        }
        _ => None,
    }
}

/// Keeps a `LISTEN` connection open (reconnecting with a short back-off) and forwards what
/// it hears: positions into `heads` (coalesced, never dropped), the rest into `inbox`.
/// A listener that hears nothing for `silence` (every node, this one too, sends a keep-alive
/// each heartbeat) is on a dead connection (a silent network: no reset ever comes) and is
/// replaced; `statement` bounds connecting and `LISTEN`. `listening` is set once a `LISTEN`
/// went through (and cleared while a replacement connects).
#[allow(clippy::too_many_arguments)]
pub(super) async fn listen_loop(
    pool: PgPool,
    me: NodeId,
    heads: Arc<Mutex<Announced>>,
    wake: Arc<Notify>,
    inbox: mpsc::Sender<Note>,
    dropped: Arc<AtomicBool>,
    silence: Duration,
    statement: Duration,
    listening: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            // A pool of its own per session, not a reader slot: dropping a listener runs
            // `UNLISTEN *` on its connection (sqlx, no deadline), which on a silent network
            // would hold that connection until the kernel gives it up. Each time a silent
            // listener was replaced the reader pool lost a slot, until it had none.
            let own = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(statement)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(pool.connect_options().as_ref().clone());
            let connect = async {
                let mut l = PgListener::connect_with(&own).await?;
                // Named after the node, so the leader can end this session if the node is
                // reaped while frozen (it would hold PostgreSQL's notification queue).
                sqlx::query("SELECT set_config('application_name', $1, false)")
                    .bind(super::nodes::listener_name(me))
                    .execute(&mut l)
                    .await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut l = within(statement, connect).await?;
            // Listening: whatever is committed from now on is announced to us.
            listening.send_replace(true);
            if inbox.send(Note::Connected).await.is_err() {
                return Ok(());
            }
            backoff = Duration::from_millis(50);
            loop {
                // Any error, a lost or a silent connection: drop this listener (the
                // connection with it), start a fresh one.
                let Ok(heard) = tokio::time::timeout(silence, l.try_recv()).await else {
                    return Err(sqlx::Error::Protocol(format!(
                        "listener connection silent for {silence:?}"
                    )));
                };
                let Some(n) = heard? else {
                    return Err(sqlx::Error::Protocol("listener connection lost".into()));
                };
                if let Some(note) = parse(me, n.payload(), &heads, &wake) {
                    if inbox.try_send(note).is_err() {
                        // A presence note may be among them: the reader's next presence
                        // read is a full one.
                        dropped.store(true, Ordering::Relaxed);
                        warn!("cluster inbox full: a live packet is dropped");
                    }
                }
            }
        };
        let r: Result<(), sqlx::Error> = tokio::select! {
            _ = stop.cancelled() => return,
            r = session => r,
        };
        listening.send_replace(false);
        match r {
            Ok(()) => return,
            Err(e) => warn!("cluster listener: {e}; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
