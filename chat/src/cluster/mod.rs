//! Several msim-chat nodes on one PostgreSQL database, one service (docs/OPERATING.md,
//! "Scaling out"). Everything the nodes share goes through the database; there is no cluster
//! protocol of our own.
//!
//! - **Fan-out of stored items** (`fanout`). The node that commits a batch pushes its items to
//!   its own sessions at once (as on one node), then sends ONE `NOTIFY msim_cluster` with its
//!   node id and the batch's sequence positions — never bodies. The NOTIFY goes out in its own,
//!   non-writing statement right after the commit instead of inside the batch transaction:
//!   PostgreSQL holds a database-wide lock from a notifying transaction's pre-commit until its
//!   commit record is flushed, which capped notifying *writing* commits at ~300–550/s on this
//!   machine, while notifying non-writing statements ran at 7,500–30,000/s (BENCHMARKS.md,
//!   "NOTIFY ceiling"). Announcements are coalesced (one in flight at a time, the newest
//!   positions win), so the NOTIFY rate never exceeds what the database takes. Every node
//!   `LISTEN`s; one reader task per node reads what is new by sequence number ([`Feed`]) and
//!   pushes it to the recipients' sessions on this node, skipping items its own node
//!   committed (already pushed; except a batch answered "outcome unknown", see `own`). Its
//!   positions only grow, so each item reaches each node's sessions once. A node joins
//!   once its listener listens (a NOTIFY sent before the `LISTEN` is lost). Notifications sent while a listener is disconnected are lost: on every
//!   (re)connect, and on a short timer (a node that dies between its commit and its NOTIFY),
//!   the reader catches up from its positions.
//! - **Live-only packets** (typing, presence, contact and profile pushes, file-offer answers
//!   that are not stored): published as a NOTIFY of their own carrying the recipient and the
//!   encoded packet (at most [`fanout::INLINE_MAX`] bytes; a larger one goes through the
//!   `cluster_events` table, and the NOTIFY names its row). They are only sent when the
//!   recipient is online on another node. Why a payload and not a table read by position like
//!   stored items: these packets are not stored for offline sessions anyway, ordering per
//!   sending node is what NOTIFY gives, and a table ordered by a plain sequence could show a
//!   lower id after a higher one (the late-gap problem the message store solves with its
//!   commit lock). A listener's reconnect loses the live packets of that moment, exactly
//!   like a client's reconnect does.
//! - **Presence** (`nodes`). `cluster_presence` holds (login, node) while a node has a
//!   session of the user; transitions are decided under a per-login advisory lock, so exactly
//!   one node announces "online" and one "offline", and recorded with the change that made
//!   them (`cluster_presence_last`), so a change whose answer was lost is announced once, by
//!   its node's repair, and only if no later change superseded it. Each node heartbeats
//!   `cluster_nodes`; the leader reaps nodes silent for longer than the node timeout and
//!   announces their users offline. Every node mirrors who is online elsewhere (for
//!   `Hub::is_online`) from presence NOTIFYs, reloaded from the table on every listener
//!   (re)connect and, for the logins changed since the last read only, every poll tick
//!   (which repairs notes dropped on a full inbox).
//! - **Periodic jobs** (`leader`): run by the holder of a session-level advisory lock; when
//!   that node dies, its database session ends and another node takes the lock.
//! - **Login throttling and rate limits** (`throttle`): the same policy as
//!   `crate::throttle` / `crate::rate`, with the counters in shared tables updated by
//!   single atomic upserts.
//!
//! - **Scrubbing** (`scrub`): bodies of acknowledged messages and receipts delivered live
//!   stay until every node's reader has passed them (a user's other sessions may be on other
//!   nodes); the leader then clears them.
//!
//! Tables: `db/postgres/migrations/0100_cluster.sql`, `0101_cluster_positions.sql`,
//! `0140_throttle_row_counts.sql` and `0160_cluster_presence_last.sql`
//! (PostgreSQL migrations of the store; they are idempotent, and [`Cluster::start`] applies
//! them too, for databases the store did not migrate); the store's `0003_cluster_feed.sql`
//! adds the `origin` columns the readers skip their own items by.
//!
//! Wiring (`server`): on PostgreSQL the server always joins ([`Cluster::start`] with
//! [`StoreFeed`]); the commit writer tells [`Cluster::committed`] (through
//! `db::commit::CommitHook`) after each durable batch; a task acts on [`Event::Offline`];
//! `cmd::auth` uses the shared throttle and registration limits (`throttle`); the server
//! leaves with [`Cluster::stop`] at shutdown.

pub(crate) mod fanout;
mod heart;
pub(crate) mod leader;
mod listener;
pub(crate) mod login_checks;
mod mirror;
pub(crate) mod nodes;
mod outbox;
mod own;
mod presence;
mod presence_read;
mod reconciler;
mod scrub;
mod stages;
mod store_feed;
#[cfg(test)]
mod tests;
pub(crate) mod throttle;

use crate::hub::Hub;
use heart::{scrub_loop, Heart};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[cfg(test)]
pub(crate) use fanout::FeedItem;
pub(crate) use fanout::{Feed, Positions};
pub(crate) use store_feed::StoreFeed;

/// A node's id: random per process start, so a restarted node is a new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub i64);

impl NodeId {
    /// A fresh random id (positive, so it prints without a sign).
    pub fn random() -> NodeId {
        NodeId(i64::from_le_bytes(crate::crypto::random_bytes::<8>()) & i64::MAX)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Timing of the cluster.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often a node heartbeats, the leader checks its lock and reaps dead nodes.
    pub heartbeat: Duration,
    /// A node silent for longer is dead: its sessions are declared offline.
    pub node_timeout: Duration,
    /// How often the reader catches up without a notification (bounds the delay after a
    /// lost NOTIFY).
    pub poll: Duration,
    /// The server's clock (the shared throttle tables' expiry times are on it).
    pub clock: crate::clock::Clock,
    /// `--database-timeout`: the longest a heartbeat, a listener check or another cluster
    /// statement waits for the database (a silent network must not hang them).
    pub database_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            clock: crate::clock::Clock::system(),
            database_timeout: crate::db::postgres::DEFAULT_TIMEOUT,
        }
    }
}

impl Timing {
    /// How long one cluster statement (a heartbeat, a presence change, a listener check) may
    /// wait: the database timeout, but never so long that a node whose heartbeat hangs misses
    /// the node timeout without noticing.
    pub(crate) fn statement(&self) -> Duration {
        self.database_timeout.min(self.node_timeout / 2)
    }

    /// The operator's settings (`--cluster-heartbeat`, `--cluster-node-timeout`).
    pub fn from_config(c: &crate::config::Config) -> Timing {
        Timing {
            heartbeat: c.cluster_heartbeat,
            node_timeout: c.cluster_node_timeout,
            clock: c.clock.clone(),
            database_timeout: c.database_timeout,
            ..Timing::default()
        }
    }
}

/// The cluster's migrations, in order, with their versions (`_sqlx_migrations`).
const SCHEMA: [(i64, &str); 5] = [
    (
        100,
        include_str!("../db/postgres/migrations/0100_cluster.sql"),
    ),
    (
        101,
        include_str!("../db/postgres/migrations/0101_cluster_positions.sql"),
    ),
    (
        140,
        include_str!("../db/postgres/migrations/0140_throttle_row_counts.sql"),
    ),
    (
        160,
        include_str!("../db/postgres/migrations/0160_cluster_presence_last.sql"),
    ),
    (
        161,
        include_str!("../db/postgres/migrations/0161_cluster_presence_online.sql"),
    ),
];

/// Creates the cluster tables when missing (the migrations' SQL, idempotent), unless the
/// store's migrator has applied them all (always, outside tests): then nothing runs, and a
/// node's start no longer replaces the trigger function. Under the store migrator's own lock
/// (review LOW 8c): a node starting while another node's migrator applies a migration waits
/// for it instead of running the same DDL at once ("tuple concurrently updated", or
/// duplicate keys in the catalogue on a fresh database).
pub(crate) async fn ensure_schema(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    use sqlx::migrate::Migrate;
    use sqlx::Connection;
    // A session lock: on a connection of its own, closed (or dropped on an error) after,
    // so the lock never goes back to the pool.
    let mut conn = pool.acquire().await?.detach();
    conn.lock().await?;
    let versions: Vec<i64> = SCHEMA.iter().map(|(v, _)| *v).collect();
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut conn)
        .await?;
    let applied: i64 = match table {
        None => 0,
        Some(_) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = ANY($1)",
            )
            .bind(&versions)
            .fetch_one(&mut conn)
            .await?
        }
    };
    if applied < versions.len() as i64 {
        let mut tx = conn.begin().await?;
        for (_, sql) in SCHEMA {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    conn.unlock().await?;
    conn.close().await
}

/// Events waiting for the server; more wait in the heartbeat task (see `Heart::flush`).
#[cfg(not(test))]
const EVENTS: usize = 64;
/// One slot in tests, so a full channel is quick to reach.
#[cfg(test)]
const EVENTS: usize = 1;

/// What the cluster asks of the rest of the server.
#[derive(Debug)]
pub(crate) enum Event {
    /// These users lost their last session when their node died: tell their watchers
    /// (`cmd::presence::announce`), as for a normal logout. Sent on the leader, and on a
    /// node whose presence change failed earlier (repaired at a heartbeat).
    Offline(Vec<String>),
    /// These users are online again although no session of theirs just opened: this node
    /// was declared dead while cut off from the database and stored its rows again (or a
    /// change that failed earlier was repaired). Tell their watchers, as for a login.
    Online(Vec<String>),
}

/// Outbox places that live packets leave to presence and node notes.
const OUTBOX_RESERVE: usize = 256;

/// The hub's view of the other nodes.
struct RemoteNodes {
    mirror: Arc<mirror::Mirror>,
}

impl crate::hub::Remote for RemoteNodes {
    fn online_elsewhere(&self, login: &str) -> bool {
        self.mirror.online(login)
    }

    fn offer(&self, login: &str, bytes: &bytes::Bytes) {
        self.mirror.offer(login, bytes)
    }
}

/// This node's membership of the cluster.
pub(crate) struct Cluster {
    node: NodeId,
    pool: PgPool,
    outbox: Arc<fanout::Outbox>,
    presence: Arc<presence::Presence>,
    #[cfg_attr(not(test), allow(dead_code))] // the tests look at its waiting packets
    mirror: Arc<mirror::Mirror>,
    statement: Duration,
    leadership: leader::Leadership,
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl crate::db::commit::CommitHook for fanout::Outbox {
    fn committed(&self, heads: [i64; crate::hub::STREAMS]) {
        fanout::Outbox::committed(self, Positions(heads))
    }

    fn started(&self) {
        self.own.started()
    }

    fn settled(
        &self,
        heads: [i64; crate::hub::STREAMS],
        lows: [i64; crate::hub::STREAMS],
        in_doubt: Vec<(usize, i64)>,
    ) {
        self.own
            .settled(Positions(heads), Positions(lows), in_doubt)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({})", self.node)
    }
}

impl Cluster {
    /// Joins the cluster on `pool`'s database: creates the tables if needed, registers this
    /// node, hooks `hub` up to the other nodes and starts the heartbeat, leadership, sender
    /// and reader tasks. `events` receives what the server must act on. The listener keeps
    /// one of `pool`'s connections for itself (the leader lock uses one of its own).
    pub(crate) async fn start(
        pool: PgPool,
        hub: Arc<Hub>,
        feed: Arc<dyn Feed>,
        timing: Timing,
        name: &str,
    ) -> Result<(Cluster, mpsc::Receiver<Event>), sqlx::Error> {
        ensure_schema(&pool).await?;
        // Before any session of this node loads its backlog: what is committed from now on,
        // the reader pushes (read later, items committed meanwhile would be skipped).
        let start = fanout::within(timing.statement(), feed.heads()).await?;
        let node = NodeId::random();
        nodes::register(&pool, node, name).await?;
        info!(node = %node, "joined the cluster");
        let stop = CancellationToken::new();
        let (outbox, outbox_rx) = fanout::Outbox::new(node);
        let publish = outbox.clone();
        // Room is kept in the outbox for presence notes: waiting packets released in a burst
        // (a reconnect storm) stop short of it.
        let mirror = Arc::new(mirror::Mirror::new(Box::new(move |login, bytes| {
            publish.has_room(OUTBOX_RESERVE) && publish.live(login, bytes)
        })));
        hub.set_remote(Arc::new(RemoteNodes {
            mirror: mirror.clone(),
        }));
        let leadership = leader::Leadership::default();
        let presence = Arc::new(presence::Presence::new(
            pool.clone(),
            node,
            hub.clone(),
            outbox.clone(),
            timing.statement(),
        ));
        let statement = timing.statement();
        let (events_tx, events) = mpsc::channel(EVENTS);
        let fed = Arc::new(Mutex::new(None));
        let (listening, mut listener_up) = tokio::sync::watch::channel(false);
        let reader = fanout::Reader {
            pool: pool.clone(),
            me: node,
            hub: hub.clone(),
            feed,
            mirror: mirror.clone(),
            poll: timing.poll,
            fed: fed.clone(),
            start,
            silence: timing.node_timeout,
            statement: timing.statement(),
            listening,
            own: outbox.own.clone(),
        };
        let reconciler = Arc::new(reconciler::Reconciler::default());
        let tasks = vec![
            tokio::spawn(fanout::send_loop(
                pool.clone(),
                outbox.clone(),
                outbox_rx,
                timing.statement(),
                stop.clone(),
            )),
            tokio::spawn(reader.run(stop.clone())),
            tokio::spawn(leader::run(
                pool.connect_options().as_ref().clone(),
                timing.heartbeat,
                leadership.clone(),
                stop.clone(),
            )),
            tokio::spawn(scrub_loop(
                pool.clone(),
                timing.heartbeat,
                leadership.clone(),
                stop.clone(),
            )),
            tokio::spawn(reconciler.clone().run(presence.clone(), stop.clone())),
            tokio::spawn(
                Heart {
                    pool: pool.clone(),
                    node,
                    name: name.to_owned(),
                    outbox: outbox.clone(),
                    presence: presence.clone(),
                    reconciler,
                    leadership: leadership.clone(),
                    timing,
                    events: events_tx,
                    offline: Vec::new(),
                    online: Vec::new(),
                    fed,
                    healthy_since: None,
                }
                .run(stop.clone()),
            ),
        ];
        let tasks = Mutex::new(tasks);
        // Not before this node listens: its sessions' rows make the other nodes publish live
        // packets for them (typing, presence, profile pushes), and a NOTIFY sent before the
        // LISTEN is lost. (Bounded: a listener that cannot connect keeps retrying meanwhile.)
        let up = tokio::time::timeout(statement, listener_up.wait_for(|up| *up)).await;
        if !matches!(up, Ok(Ok(_))) {
            warn!("the cluster listener is not listening yet: live packets may be missed");
        }
        Ok((
            Cluster {
                node,
                pool,
                outbox,
                presence,
                mirror,
                statement,
                leadership,
                stop,
                tasks,
            },
            events,
        ))
    }

    /// This node's id.
    pub(crate) fn node(&self) -> NodeId {
        self.node
    }

    /// A batch was committed up to `heads` (what the commit writer's [`Cluster::commit_hook`]
    /// does).
    #[cfg(test)]
    pub(crate) fn committed(&self, heads: Positions) {
        self.outbox.committed(heads)
    }

    /// What the commit writer tells after each batch (it announces [`Cluster::committed`]).
    pub(crate) fn commit_hook(&self) -> Arc<dyn crate::db::commit::CommitHook> {
        self.outbox.clone()
    }

    /// `login` got its first session on this node (in the hub); returns whether it is its
    /// first session anywhere (then the caller announces it online). On a database error
    /// nothing is announced now; the next heartbeat stores the row and announces it then.
    pub(crate) async fn session_opened(&self, login: &str) -> bool {
        self.presence.sync(login).await == Some(presence::Change::Online)
    }

    /// `login`'s last session on this node ended (in the hub); returns whether it was its
    /// last anywhere. Whichever of an open and a close of one login runs last writes what
    /// the hub holds then (see `presence`).
    pub(crate) async fn session_closed(&self, login: &str) -> bool {
        self.presence.sync(login).await == Some(presence::Change::Offline)
    }

    /// Whether this node runs the cluster-wide periodic jobs now.
    pub(crate) fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// Leaves the cluster: stops the tasks and removes this node's rows (its users without
    /// other sessions are returned: the caller announces them offline).
    pub(crate) async fn stop(&self) -> Vec<String> {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        // Bounded: a silent database must not hang the shutdown (the rows are then reaped).
        let leave = nodes::deregister(&self.pool, self.node, self.statement);
        match fanout::within(self.statement, leave).await {
            Ok(offline) => {
                // The other nodes' mirrors forget this node now, not at their next reload.
                let gone = format!("d {0} {0}", self.node);
                if let Err(e) = fanout::notify(&self.pool, &gone, self.statement).await {
                    warn!("leaving the cluster: {e}");
                }
                offline
            }
            Err(e) => {
                warn!("leaving the cluster: {e}");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
impl Cluster {
    /// Live packets waiting to learn whether their user is online elsewhere.
    pub(crate) fn waiting_pushes(&self) -> usize {
        self.mirror.waiting()
    }

    /// Dies like a killed process: tasks aborted mid-flight, connections dropped, no
    /// deregistration.
    pub(crate) async fn crash(self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.pool.close().await;
    }
}
