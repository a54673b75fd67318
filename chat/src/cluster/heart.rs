//! The heartbeat task of a node (see [`Heart`]) and the leader's scrub loop: tasks of their
//! own, so neither a slow database nor a long job holds the other.

use super::{
    fanout, leader, nodes, presence, reconciler, scrub, throttle, Event, NodeId, Positions, Timing,
};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long the record of a login offline everywhere is kept (`nodes::prune_last`).
const PRESENCE_KEEP: Duration = Duration::from_secs(3600);
/// Most such records deleted per heartbeat.
const PRESENCE_PRUNE: i64 = 10_000;

/// The heartbeat task: keeps this node's row fresh and, on the leader, reaps dead nodes and
/// prunes the shared tables.
pub(super) struct Heart {
    pub(super) pool: PgPool,
    pub(super) node: NodeId,
    pub(super) name: String,
    pub(super) outbox: Arc<fanout::Outbox>,
    pub(super) presence: Arc<presence::Presence>,
    pub(super) reconciler: Arc<reconciler::Reconciler>,
    pub(super) leadership: leader::Leadership,
    pub(super) timing: Timing,
    pub(super) events: mpsc::Sender<Event>,
    /// Users reaped offline whose event did not fit in `events` yet (at most every user who
    /// was online on the dead nodes).
    pub(super) offline: Vec<String>,
    /// Users to announce online (see [`Event::Online`]) whose event did not fit yet.
    pub(super) online: Vec<String>,
    /// The reader's positions, recorded with each heartbeat (for `scrub`).
    pub(super) fed: Arc<Mutex<Option<Positions>>>,
    /// Since when this node's heartbeats have been succeeding (`None`: the last one failed).
    pub(super) healthy_since: Option<tokio::time::Instant>,
}

/// Runs [`scrub::run`] every `every` while this node leads, until `stop`. A task of its own:
/// a long run never delays the heartbeats.
pub(super) async fn scrub_loop(
    pool: PgPool,
    every: Duration,
    leadership: leader::Leadership,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        let run = scrub::run(&pool);
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = run => r,
        };
        match r {
            Ok((0, 0)) => {}
            Ok((cleared, deleted)) => debug!(cleared, deleted, "cluster scrub"),
            Err(e) => warn!("cluster scrub: {e}"),
        }
    }
}

impl Heart {
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ok = self.beat().await;
            // A node whose own heartbeats fail lets another one lead: it may be cut off, and
            // the jobs (reaping, retention, the federation queue) need a healthy node.
            self.leadership.set_healthy(ok);
            match (ok, self.healthy_since) {
                (true, None) => self.healthy_since = Some(tokio::time::Instant::now()),
                (false, _) => self.healthy_since = None,
                (true, Some(_)) => {}
            }
            if ok {
                // Rows whose change failed, or that were removed while this node was
                // declared dead, are stored again; the differences are announced.
                self.reconciler.due();
            }
            let (online, offline) = self.reconciler.take();
            self.online.extend(online);
            self.offline.extend(offline);
            // Reaping judges other nodes by their heartbeats: only once this node's own have
            // been going through for a whole node timeout. After the database was away, every
            // node's heartbeat looks old; each gets that long to record a fresh one.
            let settled = self
                .healthy_since
                .is_some_and(|t| t.elapsed() >= self.timing.node_timeout);
            if settled && self.leadership.is_leader() {
                self.reap().await;
            }
            self.flush();
        }
    }

    /// Hands the announcements to the server without waiting: a slow consumer must not stop
    /// this task's heartbeats (the node would be declared dead) nor its reaping.
    fn flush(&mut self) {
        for online in [false, true] {
            let pending = if online {
                &mut self.online
            } else {
                &mut self.offline
            };
            if pending.is_empty() {
                continue;
            }
            let logins = std::mem::take(pending);
            let event = if online {
                Event::Online(logins)
            } else {
                Event::Offline(logins)
            };
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(
                    Event::Offline(logins) | Event::Online(logins),
                )) => {
                    debug!(
                        users = logins.len(),
                        "cluster events full: retried next beat"
                    );
                    *pending = logins;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("cluster events receiver gone")
                }
            }
        }
    }

    /// Returns whether the heartbeat was recorded (within the statement deadline).
    async fn beat(&self) -> bool {
        let fed = self.fed.lock().unwrap_or_else(|e| e.into_inner()).map(|p| {
            (
                p.0[crate::hub::Stream::Messages as usize],
                p.0[crate::hub::Stream::Receipts as usize],
            )
        });
        let limit = self.timing.statement();
        let ok = match fanout::within(limit, nodes::heartbeat(&self.pool, self.node, fed)).await {
            Ok(true) => true,
            Ok(false) => {
                // Declared dead while cut off: our users were announced offline. Come back;
                // the reconcile that follows stores their rows and announces them online.
                warn!(node = %self.node, "this node was declared dead: registering again");
                let again = nodes::register(&self.pool, self.node, &self.name);
                if let Err(e) = fanout::within(limit, again).await {
                    warn!("cluster: registering again: {e}");
                    return false;
                }
                self.presence.forget_all();
                true
            }
            Err(e) => {
                warn!("cluster heartbeat: {e}");
                false
            }
        };
        if ok {
            // The listeners' keep-alive (see `fanout::listen_loop`); losing one is harmless.
            let alive = format!("k {}", self.node);
            if let Err(e) = fanout::notify(&self.pool, &alive, limit).await {
                debug!("cluster keep-alive: {e}");
            }
        }
        ok
    }

    async fn reap(&mut self) {
        // Inline in the heartbeat loop: bounded like a heartbeat, so a slow database cannot
        // hold this node's own heartbeats past the node timeout.
        let limit = self.timing.statement();
        // On its own connection, dropped on a timeout: a statement still waiting in the
        // database (a lock) would otherwise keep its pool slot, every beat one more.
        let reaped = async {
            let mut conn = fanout::within(limit, self.pool.acquire()).await?;
            let reap = nodes::reap(&mut conn, self.node, self.timing.node_timeout, limit);
            let r = fanout::within(limit, reap).await;
            if r.is_err() {
                drop(conn.detach());
            }
            r
        };
        match reaped.await {
            Ok((dead, offline)) if !dead.is_empty() => {
                info!(
                    nodes = dead.len(),
                    users = offline.len(),
                    "dead nodes reaped"
                );
                self.outbox.dead(&dead);
                self.offline.extend(offline);
            }
            Ok(_) => {}
            Err(e) => warn!("cluster: reaping dead nodes: {e}"),
        }
        // Like reaping: its own connection, dropped on a timeout.
        let pruned = async {
            let mut conn = fanout::within(limit, self.pool.acquire()).await?;
            let prune = nodes::prune_last(&mut conn, PRESENCE_KEEP, PRESENCE_PRUNE, limit);
            let r = fanout::within(limit, prune).await;
            if r.is_err() {
                drop(conn.detach());
            }
            r
        };
        if let Err(e) = pruned.await {
            warn!("cluster: pruning presence records: {e}");
        }
        let now = self.timing.clock.now_micros();
        if let Err(e) = fanout::within(limit, throttle::prune(&self.pool, now, limit)).await {
            warn!("cluster: pruning shared tables: {e}");
        }
    }
}
